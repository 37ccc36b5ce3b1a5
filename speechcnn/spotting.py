"""`speechcnn spot MODEL AUDIO`: keyword detections in a recording of any length.

"window" mode classifies sliding windows of the training clip's length, each from a fresh
LSTM state (any model); a window counts only when its sound is centred (`energy_offsets`), as
training clips hold their word near the middle. "stream" mode reads the exact streaming
posterior at every frame (last-frame pooling only). `PosteriorStream` computes either track as
audio arrives and `Detector` turns it into detections, so `speechcnn listen` finds what `spot`
finds. A calibrated checkpoint's settings replace the defaults (docs/spotting.md).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from speechcnn.model import SpeechClassifier
from speechcnn.streaming import Streamer

MODES = ("window", "stream")
NOT_KEYWORDS = ("_silence_", "_unknown_")


@dataclass(frozen=True)
class SpotConfig:
    """Detection settings.

    Args:
        threshold: smoothed posterior a keyword must reach.
        keyword_thresholds: per-keyword thresholds (a calibration's), replacing `threshold`
            for the keywords they name.
        smooth_s: length of the causal moving average over the posterior track.
        refractory_s: a run above the threshold starting this soon after a detection is ignored.
        mode: "window" or "stream" (see the module docstring).
        window_s: window length in "window" mode (the training clip length).
        hop_s: hop between windows in "window" mode.
        centre_s: "window" mode counts a window only when its sound's energy centroid is this
            close to its middle, in seconds (`energy_offsets`); None counts every window.
    """

    threshold: float = 0.8
    smooth_s: float = 0.2
    refractory_s: float = 1.0
    mode: str = "window"
    window_s: float = 1.0
    hop_s: float = 0.05
    centre_s: float | None = 0.15
    keyword_thresholds: dict[str, float] | None = None

    def __post_init__(self) -> None:
        own = {f"threshold of {k}": v for k, v in (self.keyword_thresholds or {}).items()}
        for name, value in {"threshold": self.threshold, **own}.items():
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        for name in ("smooth_s", "refractory_s", "window_s", "hop_s", "centre_s"):
            value = getattr(self, name)
            if value is not None and (value < 0 if name[0] in "sr" else value <= 0):
                limit = ">= 0" if name[0] in "sr" else "positive"
                raise ValueError(f"{name} must be {limit}, got {value}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


@dataclass(frozen=True)
class Detection:
    """One detected keyword; times in seconds from the start of the recording."""

    keyword: str
    start: float
    end: float
    score: float


@dataclass
class PosteriorTrack:
    """Class posteriors over time: (N, K) `posteriors`, one row per step; the (N,) `ends` and
    `spans` in seconds of the audio each row describes; (N,) `centred`, whether each row's
    sound is centred in its span (None: not checked); `step_s` between rows (None: the median
    step of `ends`)."""

    posteriors: np.ndarray
    ends: np.ndarray
    spans: np.ndarray
    centred: np.ndarray | None = None
    step_s: float | None = None


def _joined(tracks: list[PosteriorTrack], step_s: float) -> PosteriorTrack:
    """One track of consecutive parts."""
    centred = None if tracks[0].centred is None else np.concatenate([t.centred for t in tracks])
    columns = [
        np.concatenate([getattr(t, name) for t in tracks])
        for name in ("posteriors", "ends", "spans")
    ]
    return PosteriorTrack(*columns, centred, step_s)


class PosteriorStream:
    """The posterior track of `config.mode` as a recording's audio arrives, in chunks of any size.

    "window" rows are computed once a window's audio is complete, each from its own samples
    (the front end is frame-local, so the windows of a block share their frames' embeddings);
    "stream" rows come from a `Streamer`. The rows do not depend on the chunking (up to float
    rounding). `block_windows` bounds the windows classified at once (memory).

    Raises:
        ValueError: "stream" mode for a model that pools over time (see the message).
    """

    def __init__(
        self, model: SpeechClassifier, config: SpotConfig, block_windows: int = 256
    ) -> None:
        feats = model.features
        self.model, self.config, self.block_windows = model, config, block_windows
        self.sr, self.hop, self.n_fft = feats.sample_rate, feats.hop_length, feats.n_fft
        self.win_frames = max(1, feats.num_frames(round(config.window_s * self.sr)))
        self.step = max(1, round(config.hop_s * self.sr / self.hop))  # frames between windows
        self.step_s = self.step * self.hop / self.sr
        self.streamer: Streamer | None = None
        if config.mode == "stream":
            pooling = model.head.pooling
            if pooling != "last":
                raise ValueError(
                    f"stream mode needs a model with 'last' pooling; this one has {pooling!r}, "
                    "which pools over the whole recording so far. Use --mode window (any "
                    "model), or a model trained with net.pooling=last (presets/streaming.yaml)."
                )
            self.streamer, self.step_s = Streamer(model), self.hop / self.sr
        self.buffer = np.zeros(0, dtype=np.float32)
        # Samples dropped from the buffer's front: whole frames and whole 10 ms energy frames,
        # so that frames and `energy_offsets` stay on the recording's own grids.
        self.offset = 0
        self.align = math.lcm(self.hop, max(1, self.sr // 100))
        self.next_start, self.last_start = 0, -1  # frame indices of windows

    def push(self, chunk: Tensor | np.ndarray) -> PosteriorTrack:
        """The rows that the (S,) samples `chunk` completed (S >= 0, at the model's rate)."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if self.streamer is not None:
            done = self.streamer.push(chunk)
            frames = np.arange(len(done.posteriors)) + done.first_frame
            ends = (frames * self.hop + self.n_fft) / self.sr
            spans = np.full(len(frames), self.config.window_s)
            return PosteriorTrack(done.posteriors.numpy(), ends, spans, None, self.step_s)
        self.buffer = np.concatenate([self.buffer, chunk])
        total = int(self.model.features.num_frames(self.offset + len(self.buffer)))
        starts = list(range(self.next_start, total - self.win_frames + 1, self.step))
        track = self._windows(starts, self.win_frames)
        if starts:
            self.last_start, self.next_start = starts[-1], starts[-1] + self.step
            # keep what `finish`'s last window may need: everything after the last start
            keep = (self.last_start + 1) * self.hop // self.align * self.align
            self.buffer = self.buffer[keep - self.offset :]
            self.offset = keep
        return track

    def finish(self) -> PosteriorTrack:
        """The recording has ended: the window that ends at its last frame, when no window
        did (a recording shorter than a window is one window of all its frames)."""
        if self.streamer is not None:
            return self.push(np.zeros(0, dtype=np.float32))
        total = int(self.model.features.num_frames(self.offset + len(self.buffer)))
        if self.last_start < 0:
            if total == 0:
                self.buffer = np.pad(self.buffer, (0, self.n_fft - len(self.buffer)))
            return self._windows([0], min(self.win_frames, max(total, 1)))
        last = total - self.win_frames
        return self._windows([last] if last != self.last_start else [], self.win_frames)

    @torch.no_grad()
    def _windows(self, starts: list[int], win_frames: int) -> PosteriorTrack:
        """Rows of the windows of `win_frames` frames from global frames `starts`."""
        hop, n_fft, base = self.hop, self.n_fft, self.offset // self.hop
        k = self.model.head.classifier.out_features
        posts = [np.zeros((0, k), dtype=np.float32)]
        samples = torch.from_numpy(self.buffer)
        for b in range(0, len(starts), self.block_windows):
            block = np.array(starts[b : b + self.block_windows]) - base
            first, last = block[0], block[-1] + win_frames  # frames [first, last) of the buffer
            embedded = self.model.embed(samples[first * hop : (last - 1) * hop + n_fft][None])[0]
            offsets = torch.from_numpy(block - first)[:, None]  # (W, 1)
            windows = embedded[offsets + torch.arange(win_frames)]  # (T_block, D) -> (W, T_win, D)
            posts.append(self.model.head(windows).softmax(dim=-1).numpy())  # (W, K)
        ends = ((np.array(starts, dtype=np.int64) + win_frames - 1) * hop + n_fft) / self.sr
        spans = np.full(len(starts), ((win_frames - 1) * hop + n_fft) / self.sr)
        centred = None if self.config.centre_s is None else np.zeros(0, dtype=bool)
        if self.config.centre_s is not None and starts:
            offsets = energy_offsets(self.buffer, self.sr, ends - self.offset / self.sr, spans)
            centred = np.abs(offsets) <= self.config.centre_s
        return PosteriorTrack(np.concatenate(posts), ends, spans, centred, self.step_s)


def posterior_track(
    model: SpeechClassifier,
    samples: Tensor | np.ndarray,
    config: SpotConfig,
    block_windows: int = 256,
) -> PosteriorTrack:
    """The posterior track of `config.mode` for a whole mono recording at the model's rate."""
    stream = PosteriorStream(model, config, block_windows)
    return _joined([stream.push(samples), stream.finish()], stream.step_s)


def energy_offsets(
    samples: Tensor | np.ndarray, sample_rate: int, ends: np.ndarray, spans: np.ndarray
) -> np.ndarray:
    """Seconds from the middle of each span to the energy centroid of its sound.

    The span's 10 ms frame energies, less their median (the steady background), weight the
    frames' times; a span with nothing above its median has offset 0.

    Args:
        samples: (S,) the recording.
        ends, spans: (N,) end time and length in seconds of each span.

    Returns:
        (N,) offsets in seconds, negative when the sound lies early in the span.
    """
    size = max(1, sample_rate // 100)
    audio = np.asarray(samples, dtype=np.float64)
    n = len(audio) // size
    energy = np.mean(audio[: n * size].reshape(n, size) ** 2, axis=1)  # (frames,)
    length = max(1, round(float(np.median(spans)) * 100))  # frames per span
    energy = np.pad(energy, (0, max(0, length - n)))
    starts = np.clip(np.round((ends - spans) * 100).astype(int), 0, len(energy) - length)
    # (frames - length + 1, length) views -> (N, length) the frames of each span
    frames = np.lib.stride_tricks.sliding_window_view(energy, length)[starts]
    above = np.maximum(frames - np.median(frames, axis=1, keepdims=True), 0.0)  # (N, length)
    total = above.sum(axis=1)
    times = (np.arange(length) + 0.5) / 100  # (length,) seconds into the span
    centroid = np.where(total > 0, above @ times / np.maximum(total, 1e-30), length / 200)
    return centroid - length / 200


class Detector:
    """Threshold, peak-pick and refractory-filter posterior rows into detections, as they come.

    Scores are the keyword posteriors (0 where a row's sound is off-centre) smoothed by a
    causal moving average over `smooth_s`. Each run of rows with some keyword at or above the
    threshold gives one detection when it ends: the keyword and row with the highest score in
    the run (so a wrong word that crosses first does not hide the right one that peaks later;
    with per-keyword thresholds, the highest score relative to its keyword's threshold), with
    that row's span as start and end; a run that starts within `refractory_s` of a
    detection's end is skipped. Every row's result depends on its rows alone, so any split of
    a track into parts gives the same detections.

    Args:
        class_names: the model's classes; all but `NOT_KEYWORDS` are keywords.
        config: threshold, smooth_s and refractory_s are used.
        step_s: seconds between rows.
    """

    def __init__(self, class_names: list[str], config: SpotConfig, step_s: float) -> None:
        self.names, self.config = class_names, config
        self.keyword_ids = [i for i, name in enumerate(class_names) if name not in NOT_KEYWORDS]
        own = config.keyword_thresholds or {}
        # (K_kw,) each keyword's threshold
        self.thresholds = np.array(
            [own.get(class_names[i], config.threshold) for i in self.keyword_ids]
        )
        self.width = max(1, round(config.smooth_s / step_s))
        self.tail = np.zeros((self.width - 1, len(self.keyword_ids)))  # rows before this part
        self.rows_seen = 0
        self.run: list | None = None  # [first row's end, peak rank, keyword, end, span, score]
        self.blocked_until = -np.inf

    def step(self, track: PosteriorTrack) -> list[Detection]:
        """The detections whose runs end within the next rows `track`."""
        n = len(track.ends)
        if not self.keyword_ids or n == 0:
            return []
        posteriors = track.posteriors[:, self.keyword_ids].astype(np.float64)  # (N, K_kw)
        if track.centred is not None:
            posteriors[~track.centred] = 0.0  # off-centre windows never fire
        rows = np.concatenate([self.tail, posteriors])  # (width - 1 + N, K_kw)
        sums = sum(rows[w : w + n] for w in range(self.width))  # each row's last `width` rows
        counts = np.minimum(np.arange(self.rows_seen + 1, self.rows_seen + n + 1), self.width)
        scores = sums / counts[:, None]
        self.tail, self.rows_seen = rows[len(rows) - self.width + 1 :], self.rows_seen + n
        above = (scores >= self.thresholds).any(axis=1)  # (N,)
        ranks = scores / self.thresholds  # (N, K_kw): 1 at each keyword's threshold
        bounds = [0, *(np.flatnonzero(np.diff(above.astype(np.int8))) + 1), n]
        detections: list[Detection] = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            if not above[a]:
                detections += self.finish()
                continue
            # (run rows, keywords) -> the highest rank's row and keyword
            row, keyword = np.unravel_index(np.argmax(ranks[a:b]), ranks[a:b].shape)
            row = a + int(row)
            if self.run is None:
                self.run = [float(track.ends[a]), -1.0, 0, 0.0, 0.0, 0.0]
            if ranks[row, keyword] > self.run[1]:  # the first highest wins, as in one part
                span = float(track.spans[row])
                self.run[1:] = [
                    float(ranks[row, keyword]),
                    int(keyword),
                    float(track.ends[row]),
                    span,
                    float(scores[row, keyword]),
                ]
            if b < n:
                detections += self.finish()
        return detections

    def finish(self) -> list[Detection]:
        """The detection of the run in progress, if any, as if the next row fell below."""
        if self.run is None:
            return []
        first_end, _, keyword, end, span, score = self.run
        self.run = None
        if first_end < self.blocked_until:
            # A run that starts inside the refractory period is most likely the word just
            # detected (or its echo in later windows): skip all of it, not only its head.
            return []
        self.blocked_until = end + self.config.refractory_s
        start = round(max(0.0, end - span), 3)
        name = self.names[self.keyword_ids[keyword]]
        return [Detection(name, start, round(end, 3), round(score, 4))]


def detect(track: PosteriorTrack, class_names: list[str], config: SpotConfig) -> list[Detection]:
    """The detections of a whole posterior track (see `Detector`)."""
    step_s = track.step_s
    if step_s is None:
        step_s = float(np.median(np.diff(track.ends))) if len(track.ends) > 1 else 1.0
    detector = Detector(class_names, config, step_s)
    return detector.step(track) + detector.finish()


def detections(
    model: SpeechClassifier,
    class_names: list[str],
    blocks: Iterable[Tensor | np.ndarray],
    config: SpotConfig = SpotConfig(),  # noqa: B008 (frozen dataclass)
) -> Iterator[Detection]:
    """Each detection as soon as it is known, from consecutive blocks of a mono recording at
    the model's sample rate (a file, or a microphone); the recording ends with the blocks."""
    stream = PosteriorStream(model, config)
    detector = Detector(class_names, config, stream.step_s)
    for block in blocks:
        yield from detector.step(stream.push(block))
    yield from detector.step(stream.finish())
    yield from detector.finish()


def spot(
    model: SpeechClassifier,
    class_names: list[str],
    samples: Tensor | np.ndarray,
    config: SpotConfig = SpotConfig(),  # noqa: B008 (frozen dataclass)
) -> list[Detection]:
    """Keyword detections in a mono recording at the model's sample rate."""
    return list(detections(model, class_names, [samples], config))


OPTION_HELPS = {
    "threshold": "smoothed keyword posterior that makes a detection, for every keyword",
    "smooth_s": "seconds of the causal moving average over the posteriors",
    "refractory_s": "seconds after a detection in which a new one is ignored",
    "mode": "window: the classifier on sliding windows, any model; stream: the exact "
    "streaming posteriors, for last-frame pooling",
    "window_s": "window length, the training clip length",
    "hop_s": "seconds between windows in window mode",
    "centre_s": "window mode: count a window only when its sound's energy centroid is within "
    "this many seconds of its middle (0: every window)",
}


def add_spot_options(parser: argparse.ArgumentParser) -> None:
    """`SpotConfig`'s fields as options; None where not given (see `spot_config`)."""
    defaults = SpotConfig()
    for name, text in OPTION_HELPS.items():
        kind = {"choices": MODES} if name == "mode" else {"type": float}
        default = getattr(defaults, name)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            **kind,
            default=None,
            help=f"{text} (default: the model's calibration, else {default})",
        )


def spot_config(args: argparse.Namespace, calibration: dict | None) -> SpotConfig:
    """The settings of the options given, else of the checkpoint's calibration, else defaults.

    Raises:
        ValueError: a setting out of range (the message names it).
    """
    settings = dict((calibration or {}).get("spot", {}))
    if args.threshold is not None:
        settings.pop("keyword_thresholds", None)  # --threshold is every keyword's
    settings.update({k: getattr(args, k) for k in OPTION_HELPS if getattr(args, k) is not None})
    if settings.get("centre_s") == 0:
        settings["centre_s"] = None  # --centre-s 0 counts every window
    known = {*OPTION_HELPS, "keyword_thresholds"}
    return SpotConfig(**{k: v for k, v in settings.items() if k in known})


def print_detections(
    parser: argparse.ArgumentParser, args: argparse.Namespace, blocks_of: Callable
) -> None:
    """`spot` and `listen`: load `args.model`, take its settings (`spot_config`) and print one
    JSON line per detection in `blocks_of(loaded)`; a bad model, audio file or setting ends
    with one line (ModelFileError, AudioError and the rest are ValueErrors)."""
    from speechcnn.classify import load_classifier

    try:
        loaded = load_classifier(args.model)
        config = spot_config(args, loaded.calibration)
        for found in detections(loaded.model, loaded.class_names, blocks_of(loaded), config):
            print(json.dumps(asdict(found)), flush=True)
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    """`speechcnn spot MODEL AUDIO [--threshold T] [--smooth-s S] [--refractory-s R] ...`."""
    from speechcnn.data.audio import read_audio

    parser = argparse.ArgumentParser(
        prog="speechcnn spot",
        description="Detect keywords in a recording of any length; one JSON line per "
        "detection: keyword, start and end time (s), score.",
    )
    parser.add_argument("model", help="a trained checkpoint (.ckpt)")
    parser.add_argument("audio", help="a recording (any format, rate, channel count)")
    add_spot_options(parser)
    args = parser.parse_args(argv)
    print_detections(parser, args, lambda loaded: [read_audio(args.audio, loaded.sample_rate)])


cli = main  # `speechcnn spot` (EXTRA_COMMANDS in speechcnn.cli)
