"""`speechcnn spot MODEL AUDIO`: keyword detections in a recording of any length.

Two posterior tracks from a model trained on 1 s clips:

- "window" (default): the classifier on sliding windows of `window_s` (the training clip
  length) every `hop_s`, each from a fresh LSTM state as in training; any head works (any
  pooling, bidirectional too). The front end is frame-local, so frame embeddings are computed
  once for the recording and shared by the overlapping windows.
- "stream": the exact streaming posteriors (`speechcnn.streaming`), one per frame, with the
  LSTM state carried over the whole recording (cheapest, but further from the 1 s clips of
  training). Needs a unidirectional LSTM with "last" pooling: the others pool over everything
  since the recording began.

In "window" mode a window's keyword posteriors count only when its sound is centred
(`centre_s`, `energy_offsets`): training clips hold their word near the middle, and windows
that cut a word at their edge (the end of "no" alone is close to "go") gave many false alarms.

The track is then smoothed by a causal moving average over `smooth_s` and thresholded. Each run
of steps with some keyword above the threshold gives one detection, the keyword and step with
the highest score in the run (so a wrong word that crosses first does not hide the right one
that peaks later), with the peak window's span (for "stream", the `window_s` ending at the peak
frame) as start and end; runs starting within `refractory_s` of a detection are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from speechcnn.model import SpeechClassifier
from speechcnn.streaming import stream_posteriors

MODES = ("window", "stream")
NOT_KEYWORDS = ("_silence_", "_unknown_")


@dataclass(frozen=True)
class SpotConfig:
    """Detection settings.

    Args:
        threshold: smoothed posterior a keyword must reach.
        smooth_s: length of the causal moving average over the posterior track.
        refractory_s: a run above the threshold that starts within this time after a
            detection's peak is ignored (one word gives one detection).
        mode: "window" or "stream" (see the module docstring).
        window_s: window length in "window" mode (the training clip length).
        hop_s: hop between windows in "window" mode.
        centre_s: in "window" mode, a window's keyword posteriors count only when the energy
            centroid of its sound lies within this many seconds of its middle (see
            `energy_offsets`); None counts every window.
    """

    threshold: float = 0.8
    smooth_s: float = 0.2
    refractory_s: float = 1.0
    mode: str = "window"
    window_s: float = 1.0
    hop_s: float = 0.05
    centre_s: float | None = 0.15

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.smooth_s < 0 or self.refractory_s < 0:
            s, r = self.smooth_s, self.refractory_s
            raise ValueError(f"smooth_s and refractory_s must be >= 0, got {s}, {r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.window_s <= 0 or self.hop_s <= 0:
            w, h = self.window_s, self.hop_s
            raise ValueError(f"window_s and hop_s must be positive, got {w}, {h}")
        if self.centre_s is not None and self.centre_s <= 0:
            raise ValueError(f"centre_s must be positive or None, got {self.centre_s}")


@dataclass(frozen=True)
class Detection:
    """One detected keyword; times in seconds from the start of the recording."""

    keyword: str
    start: float
    end: float
    score: float


@dataclass
class PosteriorTrack:
    """Class posteriors over time.

    Attributes:
        posteriors: (N, K) posteriors, one row per step.
        ends: (N,) end time in seconds of the audio each row has seen last.
        spans: (N,) length in seconds of the audio each row describes.
        centred: (N,) whether each row's sound is centred in its span (None: not checked);
            `detect` counts keyword posteriors only where it is.
    """

    posteriors: np.ndarray
    ends: np.ndarray
    spans: np.ndarray
    centred: np.ndarray | None = None


@torch.no_grad()
def window_posteriors(
    model: SpeechClassifier,
    samples: Tensor | np.ndarray,
    window_s: float = 1.0,
    hop_s: float = 0.05,
    block_windows: int = 256,
) -> PosteriorTrack:
    """Posteriors of sliding windows, each classified from a fresh LSTM state (any head).

    Equal to `model` on each window's samples alone (frames are local), computed in blocks of
    `block_windows` windows so memory stays bounded for long recordings.
    """
    feats = model.features
    samples = torch.as_tensor(samples, dtype=torch.float32)
    sr, hop, n_fft = feats.sample_rate, feats.hop_length, feats.n_fft
    win_frames = max(1, int(feats.num_frames(round(window_s * sr))))
    step = max(1, round(hop_s * sr / hop))  # frames between window starts
    total = int(feats.num_frames(len(samples)))
    if total == 0:
        samples = torch.nn.functional.pad(samples, (0, n_fft - len(samples)))
        total = 1
    win_frames = min(win_frames, total)
    starts = list(range(0, total - win_frames + 1, step))
    if starts[-1] != total - win_frames:
        starts.append(total - win_frames)  # the last window ends at the last frame
    posts = []
    for b in range(0, len(starts), block_windows):
        block = starts[b : b + block_windows]
        first, last = block[0], block[-1] + win_frames  # frames [first, last)
        span = samples[first * hop : (last - 1) * hop + n_fft]
        embedded = model.embed(span[None])[0]  # (1, T_block, D) -> (T_block, D)
        offsets = torch.tensor(block) - first
        index = offsets[:, None] + torch.arange(win_frames)  # (W, T_win)
        windows = embedded[index]  # (W, T_win, D)
        posts.append(model.head(windows).softmax(dim=-1))  # (W, K)
    ends = ((np.array(starts) + win_frames - 1) * hop + n_fft) / sr
    spans = np.full(len(starts), ((win_frames - 1) * hop + n_fft) / sr)
    return PosteriorTrack(torch.cat(posts).numpy(), ends, spans)


def stream_track(
    model: SpeechClassifier, samples: Tensor | np.ndarray, window_s: float = 1.0
) -> PosteriorTrack:
    """Exact streaming posteriors, one per frame, with the LSTM state carried throughout.

    Raises:
        ValueError: the model pools over time ("mean", "attention"), so its posterior at a
            frame describes the whole recording up to it, not the word being spoken.
    """
    pooling = model.head.pooling
    if pooling != "last":
        raise ValueError(
            f"stream mode needs a model with 'last' pooling; this one has {pooling!r}, whose "
            "streaming posterior pools over everything since the recording began, so over a "
            "long recording it stops following the words. Use --mode window (any model), or "
            "a model trained with net.pooling=last (recipes/presets/streaming.yaml)."
        )
    feats = model.features
    posts = stream_posteriors(model, samples).numpy()
    ends = (np.arange(len(posts)) * feats.hop_length + feats.n_fft) / feats.sample_rate
    return PosteriorTrack(posts, ends, np.full(len(posts), window_s))


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


def smooth(posteriors: np.ndarray, width: int) -> np.ndarray:
    """Causal moving average over the last `width` rows of (N, K) posteriors."""
    if width <= 1:
        return posteriors
    cumulative = np.cumsum(np.pad(posteriors, ((1, 0), (0, 0))), axis=0)  # (N+1, K)
    n = np.arange(1, len(posteriors) + 1)
    lo = np.maximum(0, n - width)
    return (cumulative[n] - cumulative[lo]) / (n - lo)[:, None]


def detect(track: PosteriorTrack, class_names: list[str], config: SpotConfig) -> list[Detection]:
    """Threshold, peak-pick and refractory-filter a posterior track into detections."""
    keyword_ids = [i for i, name in enumerate(class_names) if name not in NOT_KEYWORDS]
    if not keyword_ids or len(track.ends) == 0:
        return []
    step_s = float(np.median(np.diff(track.ends))) if len(track.ends) > 1 else 1.0
    posteriors = track.posteriors
    if track.centred is not None:
        posteriors = posteriors.copy()
        posteriors[np.ix_(~track.centred, keyword_ids)] = 0.0  # off-centre windows never fire
    scores = smooth(posteriors, max(1, round(config.smooth_s / step_s)))[:, keyword_ids]
    best_score = scores.max(axis=1)  # (N,) the highest keyword score at each step
    above = np.concatenate([[0], best_score >= config.threshold, [0]]).astype(int)  # (N + 2,)
    # runs of rows where some keyword stays above the threshold: [i, j) between the edges
    runs = np.flatnonzero(np.diff(above)).reshape(-1, 2)
    detections: list[Detection] = []
    blocked_until = -np.inf
    for i, j in runs:
        if track.ends[i] < blocked_until:
            # A run that starts inside the refractory period is most likely the word just
            # detected (or its echo in later windows): skip all of it, not only its head.
            continue
        # (run rows, keywords) -> the highest score's row and keyword
        peak, keyword = np.unravel_index(np.argmax(scores[i:j]), scores[i:j].shape)
        peak = i + int(peak)
        end = float(track.ends[peak])
        start = round(max(0.0, end - float(track.spans[peak])), 3)
        score = round(float(scores[peak, keyword]), 4)
        detections.append(Detection(class_names[keyword_ids[keyword]], start, round(end, 3), score))
        blocked_until = end + config.refractory_s
    return detections


def posterior_track(
    model: SpeechClassifier, samples: Tensor | np.ndarray, config: SpotConfig
) -> PosteriorTrack:
    """The posterior track of `config.mode` for a mono recording at the model's rate (in
    "window" mode with `centred` set when `config.centre_s` is)."""
    if config.mode == "stream":
        return stream_track(model, samples, config.window_s)
    track = window_posteriors(model, samples, config.window_s, config.hop_s)
    if config.centre_s is not None:
        offsets = energy_offsets(samples, model.features.sample_rate, track.ends, track.spans)
        track.centred = np.abs(offsets) <= config.centre_s
    return track


def spot(
    model: SpeechClassifier,
    class_names: list[str],
    samples: Tensor | np.ndarray,
    config: SpotConfig = SpotConfig(),  # noqa: B008 (frozen dataclass)
) -> list[Detection]:
    """Keyword detections in a mono recording at the model's sample rate."""
    return detect(posterior_track(model, samples, config), class_names, config)


def main(argv: list[str] | None = None) -> None:
    """`speechcnn spot MODEL AUDIO [--threshold T] [--smooth-s S] [--refractory-s R] ...`."""
    from speechcnn.classify import load_classifier
    from speechcnn.data.audio import read_audio

    defaults = SpotConfig()
    parser = argparse.ArgumentParser(
        prog="speechcnn spot",
        description="Detect keywords in a recording of any length; one JSON line per "
        "detection: keyword, start and end time (s), score.",
    )
    parser.add_argument("model", help="a trained checkpoint (.ckpt)")
    parser.add_argument("audio", help="a recording (any format, rate, channel count)")
    helps = {
        "threshold": "smoothed keyword posterior that makes a detection (default %(default)s)",
        "smooth_s": "seconds of the causal moving average over the posteriors "
        "(default %(default)s)",
        "refractory_s": "seconds after a detection in which a new one is ignored "
        "(default %(default)s)",
        "mode": "window: the classifier on sliding windows, any model; stream: the exact "
        "streaming posteriors, for last-frame pooling (default %(default)s)",
        "window_s": "window length, the training clip length (default %(default)s)",
        "hop_s": "seconds between windows in window mode (default %(default)s)",
        "centre_s": "window mode: count a window only when its sound's energy centroid is within "
        "this many seconds of its middle (0: every window; default %(default)s)",
    }
    for name, help_text in helps.items():
        kind = {"choices": MODES} if name == "mode" else {"type": float}
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, **kind, default=getattr(defaults, name), help=help_text)
    args = parser.parse_args(argv)
    try:
        # --centre-s 0 counts every window: the config's None
        settings = {name: getattr(args, name) for name in helps}
        config = SpotConfig(**{**settings, "centre_s": args.centre_s or None})
    except ValueError as error:
        parser.error(str(error))
    try:
        loaded = load_classifier(args.model)
        samples = read_audio(args.audio, loaded.sample_rate)
        detections = spot(loaded.model, loaded.class_names, samples, config)
    except ValueError as error:
        # a bad model or audio file (ModelFileError, AudioError: both ValueErrors), or a
        # model the chosen mode cannot use
        parser.error(str(error))
    for detection in detections:
        print(json.dumps(asdict(detection)))
    sys.stdout.flush()


cli = main  # `speechcnn spot` (EXTRA_COMMANDS in speechcnn.cli)


__all__ = [
    "Detection",
    "PosteriorTrack",
    "SpotConfig",
    "detect",
    "energy_offsets",
    "posterior_track",
    "smooth",
    "spot",
    "stream_track",
    "window_posteriors",
]
