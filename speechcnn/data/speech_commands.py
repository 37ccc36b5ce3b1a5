"""Google Speech Commands v0.02: the 12- and 35-class tasks, and the official 12-class test set."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from speechcnn.data.audio import AudioError, read_audio, wav_files
from speechcnn.data.clips import (
    Batch,
    BatchAugment,
    ClipSet,
    ResidentBatches,
    decode_clips,
    make_loader,
    to_float,
)
from speechcnn.data.download import SPEECH_COMMANDS_URL, TEST_SET_URL, may_download
from speechcnn.data.store import cached_clips, default_cache_dir

log = logging.getLogger(__name__)

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE, UNKNOWN = "_silence_", "_unknown_"
NOISE_DIR = "_background_noise_"
ALL_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
    "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one",
    "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow",
    "yes", "zero",
)  # fmt: skip
TASKS = ("12", "35")
SPLITS = ("train", "val", "test")
GET_DATA = (
    "Download and extract speech_commands_v0.02.tar.gz "
    "(http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz) and point --data.root "
    "at the extracted folder, or pass --data.download true to fetch it there (2.3 GB); see "
    "data/README.md"
)
DEFAULT_ROOT = "data/speech_commands_v0.02"


class DataError(ValueError):
    """A data folder that is missing or not in the expected layout."""


def class_names(task: str) -> list[str]:
    """Class names in label order: 12 = silence, unknown, 10 keywords; 35 = every word."""
    if task == "12":
        return [SILENCE, UNKNOWN, *KEYWORDS]
    if task == "35":
        return list(ALL_WORDS)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def read_split_list(path: Path) -> set[str]:
    """The relative clip paths named in a split list (validation_list.txt, testing_list.txt)."""
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def index_speech_commands(root: str | Path) -> dict[str, list[tuple[str, str]]]:
    """Word clips of each split as (relative path, word), by the official split rule.

    Files named in validation_list.txt are validation, in testing_list.txt testing, and every
    other clip in a word folder is training.

    Raises:
        DataError: the folder is missing or not in the v0.02 layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Speech Commands folder {root} does not exist. {GET_DATA}")
    lists = {name: root / name for name in ("validation_list.txt", "testing_list.txt")}
    missing = [name for name, path in lists.items() if not path.is_file()]
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    absent = [w for w in KEYWORDS if w not in words]
    if missing or absent:
        raise DataError(
            f"{root} is not a Speech Commands v0.02 folder: expected one folder per word "
            f"(missing: {absent or 'none'}), {NOISE_DIR}/, validation_list.txt and "
            f"testing_list.txt (missing: {missing or 'none'}). {GET_DATA}"
        )
    val = read_split_list(lists["validation_list.txt"])
    test = read_split_list(lists["testing_list.txt"])
    splits: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for word in words:
        for wav in wav_files(root / word):
            rel = f"{word}/{wav.name}"
            split = "val" if rel in val else "test" if rel in test else "train"
            splits[split].append((rel, word))
    listed = {rel for rel, _ in splits["val"]} | {rel for rel, _ in splits["test"]}
    if not_found := sorted((val | test) - listed):
        log.warning(
            "%d files in the split lists are missing from %s, e.g. %s",
            len(not_found),
            root,
            not_found[:3],
        )
    return splits


def read_noise(root: str | Path, sample_rate: int) -> list[np.ndarray]:
    """The background-noise recordings of `root/_background_noise_` as float arrays."""
    folder = Path(root) / NOISE_DIR
    if not folder.is_dir():
        raise DataError(
            f"{folder} does not exist: the 12-class task cuts _silence_ from it. {GET_DATA}"
        )
    noise = []
    for wav in wav_files(folder):
        try:
            noise.append(read_audio(wav, sample_rate))
        except AudioError as error:
            log.warning("skipping noise file: %s", error)
    if not noise:
        raise DataError(f"{folder} holds no readable .wav recordings. {GET_DATA}")
    return noise


def cut_silence(
    noise: list[np.ndarray], count: int, num_samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """`count` silence clips: random windows of background noise at a random volume in [0, 1]."""
    clips = []
    usable = [n for n in noise if len(n) >= num_samples]
    for _ in range(count):
        source = usable[rng.integers(len(usable))]
        start = rng.integers(0, len(source) - num_samples + 1)
        clips.append(source[start : start + num_samples] * rng.uniform(0.0, 1.0))
    return clips


def official_test_items(test_root: str | Path, names: list[str]) -> list[tuple[Path, int]]:
    """Clips of a folder in the official 12-class test layout (one folder per class name)."""
    test_root = Path(test_root)
    if not test_root.is_dir():
        raise DataError(
            f"test set folder {test_root} does not exist: expected the extracted "
            "speech_commands_test_set_v0.02 (one folder per class, _unknown_ and _silence_ too)"
        )
    missing = [n for n in names if not (test_root / n).is_dir()]
    if missing:
        raise DataError(
            f"{test_root} is not in the official 12-class test-set layout: expected folders "
            f"{names}, missing {missing}. Extract speech_commands_test_set_v0.02.tar.gz "
            "(http://download.tensorflow.org/data/speech_commands_test_set_v0.02.tar.gz) there."
        )
    items = []
    for label, name in enumerate(names):
        # Unknown clips are named like backward_0c540988_nohash_0.wav.wav: match any *.wav.
        items += [(p, label) for p in wav_files(test_root / name)]
    return items


class SpeechCommandsDataModule(pl.LightningDataModule):
    """Speech Commands v0.02 for the 12- or 35-class task.

    12 classes: the 10 keywords, `_unknown_` (every other word, subsampled to about the size of
    a keyword class) and `_silence_` (cut from `_background_noise_`, as many as a keyword
    class). Clips are padded/trimmed to `clip_seconds`. Training batches get a random time
    shift and background noise at random volume, applied on the training device.

    Args:
        root: folder of the extracted speech_commands_v0.02 data set.
        task: "12" or "35".
        test_root: a folder in the official 12-class test-set layout to test on instead of
            the testing split.
        sample_rate: sample rate the model sees (clips at other rates are resampled).
        clip_seconds: clip length.
        batch_size: clips per batch.
        num_workers: DataLoader workers (clips are already decoded in memory: 0 is fastest).
        time_shift_ms: maximum random time shift in training.
        noise_prob: probability of mixing background noise into a training clip.
        noise_volume: maximum background-noise gain in training.
        speed_perturb: maximum relative speed change in training: each clip is played at a
            rate drawn from [1 - speed_perturb, 1 + speed_perturb] (0: off).
        gain_db: maximum level change of a training clip in dB, before noise (0: off).
        seed: seed of the unknown subsampling and the silence clips (and of the order of
            device-resident training batches).
        cache: decode every clip once into the waveform store (speechcnn.data.store) and
            memory-map it on later runs; a changed data set is re-cached.
        cache_dir: where the store lives (None: `<root>/.speechcnn_cache` when the root is
            writable, else `~/.cache/speechcnn/...`).
        resident: keep each split on the training device and select batches there (True),
            use the per-item DataLoader (False), or choose by free device memory (None).
        download: fetch and extract the data set into `root` (and, while fitting, the official
            test set into `test_root`) when that folder is missing; None (the default) fetches
            only into the default `root`, so a mistyped root is "does not exist", and testing
            never fetches a given `test_root`. A valid folder is used as it is.
        url: where speech_commands_v0.02.tar.gz is fetched from (a mirror works: the file is
            checked against the published sha256).
        test_url: where speech_commands_test_set_v0.02.tar.gz is fetched from.
        check: run the data check (cached; see `speechcnn check-data`) before decoding, and
            leave out the files it finds unusable.
    """

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        task: str = "12",
        test_root: str | None = None,
        sample_rate: int = 16000,
        clip_seconds: float = 1.0,
        batch_size: int = 64,
        num_workers: int = 0,
        time_shift_ms: float = 100.0,
        noise_prob: float = 0.8,
        noise_volume: float = 0.1,
        speed_perturb: float = 0.0,
        gain_db: float = 0.0,
        seed: int = 0,
        cache: bool = True,
        cache_dir: str | None = None,
        resident: bool | None = None,
        download: bool | None = None,
        url: str = SPEECH_COMMANDS_URL,
        test_url: str = TEST_SET_URL,
        check: bool = True,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if test_root is not None and task != "12":
            raise ValueError(f"test_root holds the official 12-class test set; task is {task!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not str(root).strip():
            raise ValueError(f"root must name the data set's folder, got {root!r}")
        may_download(root, download)  # a bad value fails here, not at prepare_data
        self.root = Path(root)
        self.task = task
        self.test_root = test_root
        self.sample_rate = sample_rate
        self.num_samples = round(sample_rate * clip_seconds)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.cache = cache
        self.cache_dir = cache_dir
        self.resident = resident
        self.download = download
        self.url = url
        self.test_url = test_url
        self.check = check
        self.check_report = None
        self.class_names = class_names(task)
        self.num_classes = len(self.class_names)
        self.augment = BatchAugment(
            shift_samples=round(sample_rate * time_shift_ms / 1000),
            noise_prob=noise_prob,
            noise_volume=noise_volume,
            speed=speed_perturb,
            gain_db=gain_db,
        )
        self.clips: dict[str, ClipSet] = {}
        self._index: dict[str, list[tuple[str, str]]] | None = None
        self._noise: list[np.ndarray] | None = None

    def split_items(self, split: str) -> tuple[list[tuple[Path, int]], int]:
        """(path, label) word clips of a split, and how many silence clips it gets."""
        if self._index is None:
            self._index = index_speech_commands(self.root)
        label_of = {name: i for i, name in enumerate(self.class_names)}
        if self.task == "35":
            items = [
                (self.root / rel, label_of[w]) for rel, w in self._index[split] if w in label_of
            ]
            return items, 0
        keywords = [
            (self.root / rel, label_of[w]) for rel, w in self._index[split] if w in KEYWORDS
        ]
        unknown = [
            (self.root / rel, label_of[UNKNOWN])
            for rel, w in self._index[split]
            if w not in KEYWORDS
        ]
        per_class = round(len(keywords) / len(KEYWORDS))
        if len(unknown) > per_class:
            rng = np.random.default_rng([self.seed, SPLITS.index(split)])
            unknown = [
                unknown[i] for i in sorted(rng.choice(len(unknown), per_class, replace=False))
            ]
        return keywords + unknown, per_class

    def noise(self) -> list[np.ndarray]:
        """Background-noise recordings (read once)."""
        if self._noise is None:
            self._noise = read_noise(self.root, self.sample_rate)
        return self._noise

    def store_dir(self) -> Path:
        """Folder of the waveform store (see `cache_dir`); logs where it is and why."""
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        folder = default_cache_dir(self.root)
        if not folder.is_relative_to(self.root.resolve()):
            log.info("data root %s is not writable: waveform cache in %s", self.root, folder)
        return folder

    def _decode(
        self,
        items: list[tuple[Path, int]],
        name: str,
        extra: list[tuple[np.ndarray, int, str]] | tuple = (),
    ) -> ClipSet:
        if not self.cache:
            return decode_clips(items, self.sample_rate, self.num_samples, extra=extra)
        return cached_clips(
            items, self.sample_rate, self.num_samples, self.store_dir(), name, extra=extra
        )

    def _load(self, split: str) -> ClipSet:
        if split in self.clips:
            return self.clips[split]
        if split == "test" and self.test_root is not None:
            clips = self._decode(
                official_test_items(self.test_root, self.class_names),
                "speech_commands-official_test",
            )
        else:
            items, n_silence = self.split_items(split)
            extra = []
            if n_silence:
                rng = np.random.default_rng([self.seed, 100 + SPLITS.index(split)])
                silence = cut_silence(self.noise(), n_silence, self.num_samples, rng)
                extra = [(s, 0, f"{SILENCE}/{split}_{i}") for i, s in enumerate(silence)]
            clips = self._decode(items, f"speech_commands-{self.task}-{split}", extra=extra)
        if len(clips) == 0:
            raise DataError(f"no usable clips in the {split} split of {self.root}")
        counts = torch.bincount(clips.labels, minlength=self.num_classes).tolist()
        log.info(
            "%s: %d clips (%d skipped), per class %s", split, len(clips), len(clips.skipped), counts
        )
        self.clips[split] = clips
        return clips

    def prepare_data(self) -> None:
        """Fetch and extract what of root / test_root is missing and `may_download` allows."""
        fitting = self.trainer is None or self.trainer.state.fn == "fit"
        if not fitting and self.test_root is not None:
            return  # testing on a given folder: nothing to fetch, a typo is "does not exist"
        fetch_root = not self.root.is_dir() and may_download(self.root, self.download, DEFAULT_ROOT)
        fetch_test = (
            fitting
            and self.test_root is not None
            and not Path(self.test_root).is_dir()
            and self.download is True
        )
        if fetch_root or fetch_test:
            from speechcnn.data.download import ensure_speech_commands

            test_root = self.test_root if fetch_test else None
            ensure_speech_commands(self.root, self.url, test_root, self.test_url)

    def run_check(self) -> None:
        """Check every clip once (cached), log the summary, leave unusable clips out."""
        from speechcnn.data.check import check_speech_commands

        self.check_report = check_speech_commands(
            self.root,
            self.sample_rate,
            self.num_samples / self.sample_rate,
            cache_dir=self.cache_dir,
        )
        self.check_report.log_summary()
        bad = self.check_report.unusable_paths()
        if self._index is None:
            self._index = index_speech_commands(self.root)
        self._index = {
            split: [(rel, w) for rel, w in rows if str(self.root / rel) not in bad]
            for split, rows in self._index.items()
        }

    def setup(self, stage: str | None = None) -> None:
        if self.check and self.check_report is None:
            self.run_check()
        if stage in (None, "fit"):
            self._load("train")
            self._load("val")
            if self.augment.noise_prob > 0 and self.augment.noise.numel() == 0:
                self.augment.noise = torch.from_numpy(np.concatenate(self.noise()))
        if stage in (None, "fit", "validate"):
            self._load("val")
        if stage in (None, "test", "predict"):
            self._load("test")

    def _loader(self, split: str, shuffle: bool) -> ResidentBatches | DataLoader:
        trainer = self.trainer
        return make_loader(
            self._load(split),
            self.batch_size,
            shuffle,
            device=trainer.strategy.root_device if trainer is not None else "cpu",
            resident=self.resident,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            seed=self.seed,
            num_workers=self.num_workers,
            name=split,
        )

    def train_dataloader(self) -> ResidentBatches | DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> ResidentBatches | DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> ResidentBatches | DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> ResidentBatches | DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Float conversion, and in training the augmentation, on the batch's device."""
        waveforms, lengths, labels = batch
        waveforms = to_float(waveforms)
        if self.trainer is not None and self.trainer.training:
            waveforms = self.augment.to(waveforms.device)(waveforms, lengths)
        return waveforms, lengths, labels
