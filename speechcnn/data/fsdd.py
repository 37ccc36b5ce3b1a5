"""Free Spoken Digit Dataset: 8 kHz recordings named `{digit}_{speaker}_{take}.wav`.

Split "takes", the data set's own: takes 0-4 test, the next `val_takes` validation, the rest
training. Split "speakers": `test_speakers` are the test set (speakers never heard in
training), the other speakers' takes 0-4 validation, the rest training.
"""

from __future__ import annotations

import logging
import re

from speechcnn.data.audio import wav_files
from speechcnn.data.folder import FolderDataError, Item, LabelledAudioDataModule

log = logging.getLogger(__name__)

FSDD_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$", re.IGNORECASE)
FSDD_SPLITS = ("takes", "speakers")
DIGITS = [str(d) for d in range(10)]
TEST_TAKES = 5  # the data set's convention: takes 0-4 are the test set


def parse_fsdd_name(name: str) -> tuple[str, str, int] | None:
    """(digit, speaker, take) of an FSDD file name, or None if it is not one."""
    match = FSDD_NAME.match(name)
    return None if match is None else (match[1], match[2], int(match[3]))


class FSDDDataModule(LabelledAudioDataModule):
    """The Free Spoken Digit Dataset as a 10-class task (class names "0" .. "9").

    Args:
        root: the `recordings/` folder of the data set.
        split: "takes" (the data set's own split) or "speakers" (held-out speakers).
        val_takes: with split="takes", how many takes after the test takes are validation.
        test_speakers: with split="speakers", the speakers of the test set.
        sample_rate: sample rate the model sees (the recordings are 8 kHz).
        **kwargs: the other `LabelledAudioDataModule` arguments (batch_size, max_seconds, ...).
    """

    name = "fsdd"

    def __init__(
        self,
        root: str = "data/fsdd/recordings",
        split: str = "takes",
        val_takes: int = 5,
        test_speakers: list[str] | None = None,
        sample_rate: int = 8000,
        **kwargs: object,
    ) -> None:
        if split not in FSDD_SPLITS:
            raise ValueError(f"split must be one of {FSDD_SPLITS}, got {split!r}")
        if not 0 < val_takes < 45:
            raise ValueError(f"val_takes must be in 1..44, got {val_takes}")
        if kwargs.get("manifest") or kwargs.get("group_pattern"):
            raise ValueError(
                f"FSDD's labels and splits come from its file names: manifest "
                f"{kwargs.get('manifest')!r} and group_pattern {kwargs.get('group_pattern')!r} "
                "do not apply"
            )
        self.split, self.val_takes = split, val_takes
        self.test_speakers = list(test_speakers) if test_speakers is not None else ["george"]
        super().__init__(root=root, classes=DIGITS, sample_rate=sample_rate, **kwargs)
        # runs holding out other speakers keep their own store entries (one live entry a name)
        held_out = "-".join(sorted(self.test_speakers)) if split == "speakers" else ""
        self.name = f"fsdd-{split}-{held_out}" if held_out else f"fsdd-{split}"
        if split == "speakers":
            speakers = {parse_fsdd_name(i.path.name)[1] for i in self.items}
            if unknown := sorted(set(self.test_speakers) - speakers):
                raise ValueError(
                    f"test_speakers {unknown} have no recordings in {root}; speakers: "
                    f"{sorted(speakers)}"
                )

    def index(self) -> list[Item]:
        if not self.root.is_dir():
            raise FolderDataError(
                f"FSDD folder {self.root} does not exist: clone "
                "https://github.com/Jakobovski/free-spoken-digit-dataset and point --data.root "
                "at its recordings/ folder"
            )
        items, strangers = [], []
        for path in wav_files(self.root):
            if (parsed := parse_fsdd_name(path.name)) is None:
                strangers.append(path.name)
            else:
                digit, speaker, take = parsed
                items.append(Item(path, digit, self._split(speaker, take)))
        if strangers:
            log.warning("%d files in %s are not named {digit}_{speaker}_{take}.wav and are left "
                        "out, e.g. %s", len(strangers), self.root, strangers[:3])  # fmt: skip
        if not items:
            raise FolderDataError(f"{self.root} holds no {{digit}}_{{speaker}}_{{take}}.wav files")
        return items

    def _split(self, speaker: str, take: int) -> str:
        if self.split == "speakers":
            test, val_end = speaker in self.test_speakers, TEST_TAKES
        else:
            test, val_end = take < TEST_TAKES, TEST_TAKES + self.val_takes
        return "test" if test else "val" if take < val_end else "train"
