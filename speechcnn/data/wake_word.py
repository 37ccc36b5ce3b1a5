"""One wake word from a folder of recordings, against other speech, noise and silence. The
classes are `_unknown_` and the phrase, so `speechcnn spot` reads the model as it reads a
Speech Commands one."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from speechcnn.data.base import ClipDataModule, Extra, Items
from speechcnn.data.check import CheckReport, check_items
from speechcnn.data.clips import iter_decoded, loudest_window
from speechcnn.data.folder import AUDIO_SUFFIXES, audio_files_under
from speechcnn.data.speech_commands import NOISE_DIR, SPLITS, cut_silence

log = logging.getLogger(__name__)

UNKNOWN = "_unknown_"
# Used when present, so a fresh clone beside ../shared trains with no options.
DEFAULT_NEGATIVE_ROOTS = tuple(
    f"../shared/data/{name}" for name in ("speech_commands_dev", "fsdd", "wake_words")
)
DEFAULT_NOISE_DIR = f"../shared/data/speech_commands_dev/{NOISE_DIR}"
SILENCE_RMS = (3e-4, 0.3)  # the span of real test-set silence (official_silence)
GAP_S = (0.5, 2.0)  # noise between the recordings of a stream
GAP_RMS = (3e-4, 0.03)  # its loudness: from a quiet room to a busy one


class WakeWordError(ValueError):
    """A wake-word folder or negative root that cannot be used."""


def audio_files(root: Path, exclude: Path | None = None) -> list[Path]:
    """Audio files under `root`, sorted, without background-noise folders or `exclude` (the
    phrase's own folder inside a negative root, however either path is written)."""
    files = [p for p in audio_files_under(root) if NOISE_DIR not in p.parts]
    if exclude is None:
        return files
    exclude = exclude.resolve()
    return [p for p in files if not p.resolve().is_relative_to(exclude)]


def split_of_path(path: Path, seed: int, shares: tuple[float, float] = (0.6, 0.8)) -> str:
    """A negative recording's split, from a hash of its name and `seed`: 60/20/20."""
    digest = hashlib.sha256(f"{seed}:{path.parent.name}/{path.name}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return SPLITS[int(position >= shares[0]) + int(position >= shares[1])]


def join_with_gaps(
    recordings: list[np.ndarray],
    noise: list[np.ndarray],
    sample_rate: int,
    rng: np.random.Generator,
    min_seconds: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Recordings joined by gaps of background noise at the loudness of real rooms, repeated
    (new gaps) until `min_seconds` long -> (S,) the stream, (N, 2) each one's start and end (s)."""
    if not recordings:
        raise ValueError("a stream needs at least one recording")
    usable = [n for n in noise if len(n) >= round(GAP_S[1] * sample_rate)]
    pieces, spans, position = [], [], 0
    while not spans or position < min_seconds * sample_rate:
        for recording in recordings:
            gap = round(rng.uniform(*GAP_S) * sample_rate)
            window = np.zeros(gap, dtype=np.float32)  # silence where there is no noise to use
            if usable:
                source = usable[rng.integers(len(usable))]
                start = rng.integers(0, len(source) - gap + 1)
                window = source[start : start + gap]
                rms = np.exp(rng.uniform(np.log(GAP_RMS[0]), np.log(GAP_RMS[1])))
                window = window * rms / max(float(np.sqrt(np.mean(window**2))), 1e-8)
            pieces += [window.astype(np.float32), recording.astype(np.float32)]
            spans.append((position + gap, position + gap + len(recording)))
            position += gap + len(recording)
    stream = np.clip(np.concatenate(pieces), -1.0, 1.0)
    return stream, np.array(spans, dtype=np.float64) / sample_rate


class WakeWordDataModule(ClipDataModule):
    """A wake-word detector's data: the phrase in `keyword_dir` against everything else.

    Args:
        keyword_dir: one phrase's recordings by many speakers (1-6 s, silence around the phrase).
        negative_roots: folders of other speech; None: those of ../shared/data that exist.
        eval_negative_roots: unseen speech for the test stream; None: the held-out negatives.
        noise_dir: background noise for negatives, training and stream gaps; None: ../shared's.
        clip_seconds: window the model classifies; it must hold the whole phrase.
        val_share: share of the positive recordings for validation (the threshold's choice).
        test_share: share of the positive recordings for the final test.
        positive_share: positives are repeated in training to about this share of its clips.
        noise_share: noise windows per negative recording, as negatives of each split.
        sample_rate, batch_size, num_workers, seed, cache, cache_dir, resident, check: see base.
    """

    data_error = WakeWordError
    name = "wake_word"

    def __init__(
        self,
        keyword_dir: str,
        negative_roots: list[str] | None = None,
        eval_negative_roots: list[str] | None = None,
        noise_dir: str | None = None,
        clip_seconds: float = 1.5,
        val_share: float = 0.1,
        test_share: float = 0.1,
        positive_share: float = 0.25,
        noise_share: float = 0.1,
        sample_rate: int = 16000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        cache: bool = True,
        cache_dir: str | None = None,
        resident: bool | None = None,
        check: bool = True,
    ) -> None:
        self.keyword_dir = Path(keyword_dir).resolve()
        if not self.keyword_dir.is_dir():
            raise WakeWordError(f"keyword_dir {keyword_dir} does not exist or is not a folder")
        if not (0 < val_share and 0 < test_share and val_share + test_share < 1):
            raise ValueError(
                f"val_share and test_share must be positive with a sum under 1, got "
                f"{val_share}, {test_share}"
            )
        if not 0 < positive_share < 1:
            raise ValueError(f"positive_share must be in (0, 1), got {positive_share}")
        if noise_share < 0:
            raise ValueError(f"noise_share must be >= 0, got {noise_share}")
        self.phrase = self.keyword_dir.name
        super().__init__(
            keyword_dir, [UNKNOWN, self.phrase], sample_rate, round(sample_rate * clip_seconds),
            batch_size=batch_size, num_workers=num_workers, seed=seed, cache=cache,
            cache_dir=cache_dir, resident=resident, check=check,
        )  # fmt: skip
        self.name = f"wake_word-{self.phrase}"
        self.negative_roots = self._roots(negative_roots, "negative_roots")
        self.eval_negative_roots = (
            None
            if eval_negative_roots is None
            else self._roots(eval_negative_roots, "eval_negative_roots")
        )
        if noise_dir is None and Path(DEFAULT_NOISE_DIR).is_dir():
            noise_dir = DEFAULT_NOISE_DIR
        if noise_dir is not None and not Path(noise_dir).is_dir():
            raise WakeWordError(f"noise_dir {noise_dir} does not exist or is not a folder")
        self.noise_dir = None if noise_dir is None else Path(noise_dir)
        self.shares = (val_share, test_share)
        self.positive_share, self.noise_share = positive_share, noise_share
        self._noise: list[np.ndarray] | None = None

    def _roots(self, roots: list[str] | None, option: str) -> list[Path]:
        if roots is None:
            roots = [r for r in DEFAULT_NEGATIVE_ROOTS if Path(r).is_dir()]
            if not roots:
                raise WakeWordError(
                    f"no negative speech: none of {', '.join(DEFAULT_NEGATIVE_ROOTS)} exists; "
                    "give --data.negative_roots [DIR, ...]"
                )
        missing = [r for r in roots if not Path(r).is_dir()]
        if missing or not roots:
            raise WakeWordError(f"{option}: {missing or roots} must name existing folders")
        return [Path(r) for r in roots]

    def positive_files(self, split: str) -> list[Path]:
        """The phrase's recordings of a split (a seeded shuffle of the folder, then cut)."""
        files = audio_files(self.keyword_dir)
        if not files:
            raise WakeWordError(
                f"{self.keyword_dir} holds no audio files ({', '.join(AUDIO_SUFFIXES)})"
            )
        order = np.random.default_rng(self.seed).permutation(len(files))
        n_val, n_test = (max(1, round(share * len(files))) for share in self.shares)
        bounds = {"test": (0, n_test), "val": (n_test, n_test + n_val)}
        low, high = bounds.get(split, (n_test + n_val, len(files)))
        return [files[i] for i in sorted(order[low:high])]

    def negative_files(self, split: str, roots: list[Path] | None = None) -> list[Path]:
        """Other speech of a split: every recording of `roots` (default negative_roots)."""
        roots = roots or self.negative_roots
        files = [path for root in roots for path in audio_files(root, exclude=self.keyword_dir)]
        return [path for path in files if split_of_path(path, self.seed) == split]

    @property
    def eval_negatives(self) -> str:
        """Where calibration's test negatives come from."""
        return "eval_negative_roots" if self.eval_negative_roots else "held-out negatives"

    def calibration_set(self, split: str) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
        """The phrase's whole recordings of `split` and the split's negative recordings; for
        "test", every recording of eval_negative_roots when given (speech the training never
        saw), else the held-out share of the negatives."""
        positives = {self.phrase: self.recordings(self.positive_files(split))}
        if split == "test" and self.eval_negative_roots:
            roots = self.eval_negative_roots
            files = [f for part in SPLITS for f in self.negative_files(part, roots)]
        else:
            files = self.negative_files(split)
        return positives, self.recordings(files)

    def recordings(self, files: list[Path]) -> list[np.ndarray]:
        """Whole decoded recordings of `files`; unusable ones are named in the log, skipped."""
        usable = [(path, 0) for path in files if str(path) not in self.unusable]
        return [samples for samples, _, _ in iter_decoded(usable, self.sample_rate, skipped=[])]

    def split_items(self, split: str) -> Items:
        return []  # every clip is a window cut from its recording: `extra_clips`

    def extra_clips(self, split: str) -> Extra:
        """The split's windows: the phrase (repeated in training); other speech, at its loudest
        and anywhere in a stream of it; noise."""
        n = self.num_samples
        positives = [loudest_window(r, n) for r in self.recordings(self.positive_files(split))]
        speech = self.recordings(self.negative_files(split))
        negatives = [loudest_window(r, n) for r in speech]
        rng = np.random.default_rng([self.seed, SPLITS.index(split)])
        if speech:  # windows anywhere in a stream of them, as detection sees other speech
            stream, _ = join_with_gaps(speech, self.noise(), self.sample_rate, rng)
            starts = rng.integers(0, len(stream) - n, len(speech)) if len(stream) > n else []
            negatives += [stream[s : s + n] for s in starts]
        if (noise := self.noise()) and self.noise_share > 0:
            count = round(self.noise_share * len(negatives))
            negatives += cut_silence(noise, count, n, rng, SILENCE_RMS)
        share, repeat = self.positive_share, 1
        if split == "train" and positives:
            repeat = max(1, round(share * len(negatives) / ((1 - share) * len(positives))))
        clips = [(c, 1, f"{self.phrase}/{split}_{i}_{k}") for k in range(repeat)
                 for i, c in enumerate(positives)]  # fmt: skip
        clips += [(c, 0, f"{UNKNOWN}/{split}_{i}") for i, c in enumerate(negatives)]
        log.info(
            "%s: %d %s windows (x%d), %d negatives", split, len(positives), self.phrase,
            repeat, len(negatives),
        )  # fmt: skip
        return clips

    def noise(self) -> list[np.ndarray]:
        """The recordings of `noise_dir` (read once; none without it)."""
        if self._noise is None:
            self._noise = self.recordings(
                audio_files_under(self.noise_dir) if self.noise_dir else []
            )
        return self._noise

    def data_check(self, cache: bool = True) -> CheckReport:
        items = [(path, self.phrase, "positive") for path in audio_files(self.keyword_dir)]
        for root in self.negative_roots + (self.eval_negative_roots or []):
            items += [(path, UNKNOWN, "negative") for path in audio_files(root, self.keyword_dir)]
        return check_items(
            items, self.keyword_dir, self.sample_rate, cache=cache, cache_dir=self.cache_dir
        )
