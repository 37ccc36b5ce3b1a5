"""Google Speech Commands v0.02: the 12- and 35-class tasks, and the official 12-class test set."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from speechcnn.data.audio import wav_files
from speechcnn.data.base import ClipDataModule, Extra, Items
from speechcnn.data.check import CheckReport, check_items
from speechcnn.data.clips import iter_decoded, loudest_window
from speechcnn.data.download import DownloadError, fetch_and_extract, may_download
from speechcnn.data.folder import audio_files_under

log = logging.getLogger(__name__)

SPEECH_COMMANDS_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
SPEECH_COMMANDS_SHA256 = "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"
TEST_SET_URL = "http://download.tensorflow.org/data/speech_commands_test_set_v0.02.tar.gz"
TEST_SET_SHA256 = "cc2a00c1147c2254e9be3fa0f779d8c17421dc349b86366567a8edfa9acd51df"

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
    f"Download and extract speech_commands_v0.02.tar.gz ({SPEECH_COMMANDS_URL}) and point "
    "--data.root at the extracted folder, or pass --data.download true to fetch it there "
    "(2.3 GB); see data/README.md"
)
DEFAULT_ROOT = "data/speech_commands_v0.02"


class DataError(ValueError):
    """A data folder that is missing or not in the expected layout."""


def class_names(task: str) -> list[str]:
    """Class names in label order: 12 = silence, unknown, 10 keywords; 35 = every word."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return [SILENCE, UNKNOWN, *KEYWORDS] if task == "12" else list(ALL_WORDS)


def read_split_list(path: Path) -> set[str]:
    """The relative clip paths named in a split list (validation_list.txt, testing_list.txt)."""
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def index_speech_commands(
    root: str | Path, split_lists: str | Path | None = None
) -> dict[str, list[tuple[str, str]]]:
    """Word clips of each split as (relative path, word) by validation_list.txt and
    testing_list.txt (`root`'s, or those in the folder `split_lists`); the rest is training."""
    return _scan(Path(root), split_lists)[0]


def _scan(root: Path, split_lists: str | Path | None = None) -> tuple[dict, list[str], list[str]]:
    """`index_speech_commands`, the listed files that are missing, the files in both lists."""
    if not root.is_dir():
        raise DataError(f"Speech Commands folder {root} does not exist. {GET_DATA}")
    where = root if split_lists is None else Path(split_lists)
    lists = {name: where / name for name in ("validation_list.txt", "testing_list.txt")}
    missing = [name for name, path in lists.items() if not path.is_file()]
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    absent = [w for w in KEYWORDS if w not in words]
    if missing or absent:
        raise DataError(
            f"{root} is not a Speech Commands v0.02 folder: expected one folder per word "
            f"(missing: {absent or 'none'}), {NOISE_DIR}/, validation_list.txt and "
            f"testing_list.txt (missing from {where}: {missing or 'none'}). {GET_DATA}"
        )
    val, test = (read_split_list(path) for path in lists.values())
    splits: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for word in words:
        for wav in wav_files(root / word):
            rel = f"{word}/{wav.name}"
            splits["val" if rel in val else "test" if rel in test else "train"].append((rel, word))
    present = {rel for rows in splits.values() for rel, _ in rows}
    if not_found := sorted((val | test) - present):
        log.warning("%d files in the split lists are missing from %s, e.g. %s", len(not_found),
                    root, not_found[:3])  # fmt: skip
    return splits, not_found, sorted(val & test)


def read_noise(root: str | Path, sample_rate: int) -> list[np.ndarray]:
    """The background-noise recordings of `root/_background_noise_` as float arrays."""
    folder = Path(root) / NOISE_DIR
    if not folder.is_dir():
        raise DataError(
            f"{folder} does not exist: the 12-class task cuts _silence_ from it. {GET_DATA}"
        )
    wavs = [(wav, 0) for wav in wav_files(folder)]
    noise = [samples for samples, _, _ in iter_decoded(wavs, sample_rate, skipped=[])]
    if not noise:
        raise DataError(f"{folder} holds no readable .wav recordings. {GET_DATA}")
    return noise


def cut_silence(
    noise: list[np.ndarray],
    count: int,
    num_samples: int,
    rng: np.random.Generator,
    rms: tuple[float, float] | None = None,
) -> list[np.ndarray]:
    """`count` silence clips: random windows of background noise at a random volume in [0, 1],
    or with `rms` (low, high) scaled to an RMS drawn log-uniformly from [low, high]."""
    clips = []
    usable = [n for n in noise if len(n) >= num_samples]
    for _ in range(count):
        source = usable[rng.integers(len(usable))]
        start = rng.integers(0, len(source) - num_samples + 1)
        clip = source[start : start + num_samples]
        if rms is None:
            clips.append(clip * rng.uniform(0.0, 1.0))
        else:
            target = np.exp(rng.uniform(np.log(rms[0]), np.log(rms[1])))
            clips.append(clip * (target / max(float(np.sqrt(np.mean(clip**2))), 1e-8)))
    return [np.clip(c, -1.0, 1.0) for c in clips]


def official_test_items(test_root: str | Path, names: list[str]) -> list[tuple[Path, int]]:
    """Clips of a folder in the official 12-class test layout (one folder per class name)."""
    test_root = Path(test_root)
    if not test_root.is_dir():
        raise DataError(
            f"test set folder {test_root} does not exist: expected the extracted "
            "speech_commands_test_set_v0.02 (one folder per class, _unknown_ and _silence_ too)"
        )
    if missing := [n for n in names if not (test_root / n).is_dir()]:
        raise DataError(
            f"{test_root} is not in the official 12-class test-set layout: expected folders "
            f"{names}, missing {missing}. Extract speech_commands_test_set_v0.02.tar.gz "
            f"({TEST_SET_URL}) there."
        )
    # Unknown clips are named like backward_0c540988_nohash_0.wav.wav: match any *.wav.
    return [(p, label) for label, name in enumerate(names) for p in wav_files(test_root / name)]


def check_speech_commands(
    root: str | Path,
    sample_rate: int = 16000,
    clip_seconds: float = 1.0,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> CheckReport:
    """Check every word clip (flagging those over 1.5 x clip_seconds) and both split lists."""
    root = Path(root)
    splits, missing, overlap = _scan(root)  # raises DataError naming what the layout lacks
    items = [(root / rel, word, split) for split, rows in splits.items() for rel, word in rows]
    return check_items(
        items, root, sample_rate, long_seconds=1.5 * clip_seconds, missing_listed=missing,
        split_overlap=overlap, cache=cache, cache_dir=cache_dir,
    )  # fmt: skip


def ensure_speech_commands(
    root: str | Path,
    url: str = SPEECH_COMMANDS_URL,
    test_root: str | Path | None = None,
    test_url: str = TEST_SET_URL,
    show_progress: bool = True,
) -> None:
    """Fetch Speech Commands v0.02 into `root` (and the official 12-class test set into
    `test_root`) unless a valid folder is there; a non-empty invalid one is never overwritten."""
    # The checksums are looked up at call time, so a test can serve its own small archives.
    jobs = [(Path(root), url, SPEECH_COMMANDS_SHA256, index_speech_commands)]
    if test_root is not None:
        jobs.append((Path(test_root), test_url, TEST_SET_SHA256,
                     lambda p: official_test_items(p, class_names("12"))))  # fmt: skip
    for target, source, sha256, validate in jobs:
        try:
            validate(target)
            continue  # already there and in the expected layout
        except DataError as error:
            if target.is_dir() and any(target.iterdir()):
                raise DownloadError(
                    f"{target} exists but is not usable ({error}); not downloading over it: "
                    "move it away, or point the data root elsewhere"
                ) from error
        fetch_and_extract(source, target, sha256, show_progress=show_progress)
        validate(target)  # a mirror with another layout fails here, naming what is missing


class SpeechCommandsDataModule(ClipDataModule):
    """Speech Commands v0.02 for the 12- or 35-class task.

    12 classes: the 10 keywords, `_unknown_` (every other word, subsampled to the size of a
    keyword class) and `_silence_` (as many, cut from `_background_noise_`, which training also
    mixes into its clips). Clips are padded/trimmed to `clip_seconds`.

    Args:
        root: folder of the extracted speech_commands_v0.02 data set.
        task: "12" or "35".
        test_root: the extracted official 12-class test set, tested on instead of the test split.
        clip_seconds: clip length.
        seed: seed of the unknown subsampling, the silence clips and the training batch order.
        download: fetch a missing `root` (and, while fitting, `test_root`); None (default): only
            into the default `root`, so a mistyped root is "does not exist".
        url: where speech_commands_v0.02.tar.gz comes from (a mirror works: sha256 checks it).
        test_url: where speech_commands_test_set_v0.02.tar.gz is fetched from.
        split_lists: a folder with validation_list.txt and testing_list.txt to use, not root's.
        silence_rms: (low, high): training silence gets a log-uniform RMS in it, not a volume <= 1.
        unknown_roots: folders of other speech (any audio files under them): as many of their
            recordings as a keyword class has training clips, each cut to its loudest
            `clip_seconds`, join training's `_unknown_`.
        sample_rate, batch_size, num_workers, cache, cache_dir, resident, check: as
            `ClipDataModule`'s.
    """

    data_error = DataError
    keywords = KEYWORDS  # the classes of the keyword accuracy

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        task: str = "12",
        test_root: str | None = None,
        sample_rate: int = 16000,
        clip_seconds: float = 1.0,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        cache: bool = True,
        cache_dir: str | None = None,
        resident: bool | None = None,
        download: bool | None = None,
        url: str = SPEECH_COMMANDS_URL,
        test_url: str = TEST_SET_URL,
        check: bool = True,
        split_lists: str | None = None,
        silence_rms: tuple[float, float] | None = None,
        unknown_roots: list[str] | None = None,
    ) -> None:
        names = class_names(task)  # a bad task fails first
        if test_root is not None and task != "12":
            raise ValueError(f"test_root holds the official 12-class test set; task is {task!r}")
        if silence_rms is not None and not 0 < silence_rms[0] <= silence_rms[1] <= 1:
            raise ValueError(
                f"silence_rms must be (low, high) with 0 < low <= high <= 1, got {silence_rms}"
            )
        if unknown_roots and task != "12":
            raise ValueError(f"unknown_roots add to the 12-class `_unknown_`; task is {task!r}")
        for extra in unknown_roots or []:
            if not Path(extra).is_dir():
                raise ValueError(f"unknown_roots: {extra} is not a folder")
        if not str(root).strip():
            raise ValueError(f"root must name the data set's folder, got {root!r}")
        may_download(root, download)  # a bad value fails here, not at prepare_data
        super().__init__(
            root, names, sample_rate, round(sample_rate * clip_seconds),
            batch_size=batch_size, num_workers=num_workers, seed=seed, cache=cache,
            cache_dir=cache_dir, resident=resident, check=check,
        )  # fmt: skip
        self.task, self.name = task, f"speech_commands-{task}"
        self.test_root, self.split_lists = test_root, split_lists
        self.download, self.url, self.test_url = download, url, test_url
        self.silence_rms = None if silence_rms is None else tuple(silence_rms)
        self.unknown_roots = [Path(r) for r in unknown_roots or []]
        self._index: dict[str, list[tuple[str, str]]] | None = None
        self._noise: list[np.ndarray] | None = None

    def entry_name(self, split: str) -> str:
        if split == "test" and self.test_root is not None:
            return "speech_commands-official_test"
        if self.split_lists is not None:
            # its own store entries: runs on other splits of the same root keep theirs
            tag = hashlib.sha256(str(Path(self.split_lists).resolve()).encode()).hexdigest()
            return f"{super().entry_name(split)}-{tag[:8]}"
        return super().entry_name(split)

    def _split_items(self, split: str) -> tuple[Items, int]:
        """(path, label) word clips of a split, and how many silence clips it gets."""
        if split == "test" and self.test_root is not None:
            return official_test_items(self.test_root, self.class_names), 0
        # Unusable files go before the unknown subsampling, which draws from what is left.
        rows = self._word_rows(split)
        label_of = {name: i for i, name in enumerate(self.class_names)}
        if self.task == "35":
            return [(path, label_of[w]) for path, w in rows if w in label_of], 0
        keywords = [(path, label_of[w]) for path, w in rows if w in KEYWORDS]
        unknown = [(path, label_of[UNKNOWN]) for path, w in rows if w not in KEYWORDS]
        per_class = round(len(keywords) / len(KEYWORDS))
        if len(unknown) > per_class:
            rng = np.random.default_rng([self.seed, SPLITS.index(split)])
            keep = sorted(rng.choice(len(unknown), per_class, replace=False))
            unknown = [unknown[i] for i in keep]
        return keywords + unknown, per_class

    def _word_rows(self, split: str) -> list[tuple[Path, str]]:
        """(path, word) of every usable clip of a split of `root` (silence aside)."""
        if self._index is None:
            self._index = index_speech_commands(self.root, self.split_lists)
        rows = [(self.root / rel, w) for rel, w in self._index[split]]
        return [(path, w) for path, w in rows if str(path) not in self.unusable]

    def split_items(self, split: str) -> Items:
        return self._split_items(split)[0]

    def extra_clips(self, split: str) -> Extra:
        """The split's `_silence_` clips, cut from the background noise, and in training the
        `unknown_roots` windows."""
        if not (n_silence := self._split_items(split)[1]):
            return []
        rng = np.random.default_rng([self.seed, 100 + SPLITS.index(split)])
        rms = self.silence_rms if split == "train" else None
        silence = cut_silence(self.noise(), n_silence, self.num_samples, rng, rms)
        clips = [(s, 0, f"{SILENCE}/{split}_{i}") for i, s in enumerate(silence)]
        if split == "train" and self.unknown_roots:
            clips += self._extra_unknown(n_silence, rng)
        return clips

    def _extra_unknown(self, count: int, rng: np.random.Generator) -> Extra:
        """`count` recordings drawn from `unknown_roots`, each at its loudest window."""
        files = sorted(
            p for root in self.unknown_roots for p in audio_files_under(root)
            if NOISE_DIR not in p.parts
        )  # fmt: skip
        if not files:
            raise DataError(f"unknown_roots {[str(r) for r in self.unknown_roots]}: no audio files")
        picked = [(files[i], 0) for i in sorted(rng.permutation(len(files))[:count])]
        unknown = self.class_names.index(UNKNOWN)
        return [
            (loudest_window(samples, self.num_samples), unknown, path)
            for samples, _, path in iter_decoded(picked, self.sample_rate, skipped=[])
        ]

    eval_negatives = "held-out words"  # calibration's test negatives: the testing split's

    def calibration_set(self, split: str) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
        """Each keyword's clips of `split` and all its clips of other words (not the subsample
        `_unknown_` trains on); silence is the gaps' noise. Test uses `test_root` when set."""
        if split == "test" and self.test_root is not None:
            items = official_test_items(self.test_root, self.class_names)
            words = [(p, self.class_names[k]) for p, k in items if str(p) not in self.unusable]
        else:
            words = self._word_rows(split)
        words = [(path, w) for path, w in words if w != SILENCE]
        positives: dict[str, list[np.ndarray]] = {w: [] for w in self.keywords}
        negatives: list[np.ndarray] = []
        for samples, word, _ in iter_decoded(words, self.sample_rate, skipped=[]):
            (positives[word] if word in positives else negatives).append(samples)
        return positives, negatives

    def noise(self) -> list[np.ndarray]:
        """Background-noise recordings (read once)."""
        if self._noise is None:
            self._noise = read_noise(self.root, self.sample_rate)
        return self._noise

    def data_check(self, cache: bool = True) -> CheckReport:
        return check_speech_commands(
            self.root, self.sample_rate, self.num_samples / self.sample_rate, cache, self.cache_dir
        )

    def prepare_data(self) -> None:
        """Fetch and extract what of root / test_root is missing and `may_download` allows."""
        fitting = self.trainer is None or self.trainer.state.fn == "fit"
        if not fitting and self.test_root is not None:
            return  # testing on a given folder: nothing to fetch, a typo is "does not exist"
        fetch_root = not self.root.is_dir() and may_download(self.root, self.download, DEFAULT_ROOT)
        missing_test = self.test_root is not None and not Path(self.test_root).is_dir()
        test_root = self.test_root if missing_test and self.download is True else None
        if fetch_root or test_root is not None:
            ensure_speech_commands(self.root, self.url, test_root, self.test_url)
