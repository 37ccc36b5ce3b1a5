"""Exact streaming inference: audio chunks in, per-frame class posteriors out.

Frame t depends on samples [t * hop, t * hop + n_fft) alone (a frequency-only front end, no
centring), so with a unidirectional LSTM, carrying the STFT's overlap and the head's state gives
the offline model's posteriors: frame t's for frames 0..t since the start or the last reset
("last" pooling suits endless streams, "mean" and "attention" one utterance at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from speechcnn.fused_step import FrameStep, compiled
from speechcnn.model import LSTMHead, SpeechClassifier, StreamState


class NotStreamableError(ValueError):
    """A model whose outputs at frame t depend on frames after t."""


def check_streamable(model: SpeechClassifier) -> None:
    """Raise `NotStreamableError` saying why `model` cannot stream and what to change."""
    head = model.head
    if not isinstance(head, LSTMHead):
        raise NotStreamableError(f"streaming needs an LSTMHead, got {type(head).__name__}")
    if head.bidirectional:
        raise NotStreamableError(
            "model cannot stream: the LSTM is bidirectional: its backward direction reads the "
            "recording from the end, so no output exists until the audio has ended. Train with "
            "net.bidirectional=false (--model.net.bidirectional false, the recipe default) to "
            "stream with any pooling, or use `speechcnn spot --mode window` with any model."
        )


@torch.no_grad()
def offline_posteriors(model: SpeechClassifier, waveforms: Tensor) -> Tensor:
    """(B, S) waveforms, S >= n_fft -> (B, T, K) posteriors, row t the model's for frames 0..t:
    the offline reference the streamer must equal (a streamable model in eval mode)."""
    check_streamable(model)
    return model.prefix_logits(waveforms).softmax(dim=-1)


@dataclass
class StreamStep:
    """What one `Streamer.push` produced: the frames completed by the chunk."""

    features: Tensor  # (F, T) log-mel frames (before the input norm), T >= 0
    posteriors: Tensor  # (T, K) class posteriors at those frames
    first_frame: int  # index of the first of these frames in the whole stream


class Streamer:
    """One audio stream: push chunks of any size, get the frames each completed. `model` (a
    unidirectional LSTM, put in eval mode; else `NotStreamableError`) runs `max_frames_per_step`
    frames at most at once (bounds memory, not the result); `fused` runs the compiled `FrameStep`
    where it applies (a float model on the CPU, else `SpeechClassifier.infer`), same result."""

    def __init__(
        self, model: SpeechClassifier, max_frames_per_step: int = 1000, fused: bool = True
    ) -> None:
        check_streamable(model)
        if max_frames_per_step <= 0:
            raise ValueError(f"max_frames_per_step must be positive, got {max_frames_per_step}")
        self.model = model.eval()
        features = model.features
        self.sample_rate, self.n_fft = features.sample_rate, features.n_fft
        self.hop = features.hop_length
        self.max_frames_per_step = max_frames_per_step
        self.num_classes: int = model.head.classifier.out_features
        self._step: torch.nn.Module | None = None
        self._device = next(model.parameters()).device
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        if fused and on_cpu and FrameStep.usable(model):
            # The trial input: one frame's samples, from the start-of-stream state.
            example = torch.zeros(self.n_fft)
            self._step = compiled(FrameStep(model), example, *model.head.initial_state())
        self._no_features = torch.zeros(features.out_features, 0)  # (F, 0)
        self._no_posteriors = torch.zeros(0, self.num_classes)  # (0, K)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: no pending samples, zero LSTM state, frame count 0."""
        self._pending = torch.zeros(0)
        # on the model's device, where `SpeechClassifier.infer` carries it from chunk to chunk
        state = self.model.head.initial_state()
        self._state: StreamState = tuple(t.to(self._device) for t in state)
        self.frames_done = self.samples_seen = 0

    def frame_end_time(self, frame: int | Tensor | np.ndarray) -> float | Tensor | np.ndarray:
        """Time in seconds of the last sample that frame index `frame` covers (its end)."""
        return (frame * self.hop + self.n_fft) / self.sample_rate

    def push(self, chunk: Tensor | np.ndarray) -> StreamStep:
        """Feed the next (S,) float samples in [-1, 1] (S >= 0, at the model's sample rate);
        returns the frames they completed: features (F, T) and posteriors (T, K)."""
        # No autograd context here: the fused step holds constants, so with an input that needs
        # no gradient it records nothing, and entering inference mode on every call would cost
        # a tenth of a 20 ms chunk's work; the modules path enters it in `_frames`.
        chunk = torch.as_tensor(chunk, dtype=torch.float32).detach()
        if chunk.dim() != 1:
            raise ValueError(f"expected a chunk of shape (S,), got {tuple(chunk.shape)}")
        self.samples_seen += chunk.shape[0]
        pending = torch.cat([self._pending, chunk]) if self._pending.numel() else chunk
        n_frames = max(0, (pending.shape[0] - self.n_fft) // self.hop + 1)
        first = self.frames_done
        feats, posts, start = [], [], 0
        for done in range(0, n_frames, self.max_frames_per_step):
            n = min(n_frames - done, self.max_frames_per_step)
            f, p = self._frames(pending[start : start + (n - 1) * self.hop + self.n_fft])
            feats.append(f)
            posts.append(p)
            start += n * self.hop
        self.frames_done += n_frames
        # Keep the samples from the next frame's first on. Copy out of a long chunk so that its
        # storage can be freed; a short one stays referenced (next call's cat copies it).
        rest = pending[start:]
        self._pending = rest.clone() if pending.shape[0] > 4 * self.n_fft else rest
        if not feats:  # most 10 ms chunks of a 20 ms hop: no frame completed yet
            return StreamStep(self._no_features, self._no_posteriors, first)
        if len(feats) == 1:
            return StreamStep(feats[0], posts[0], first)
        return StreamStep(torch.cat(feats, dim=1), torch.cat(posts, dim=0), first)

    def _frames(self, span: Tensor) -> tuple[Tensor, Tensor]:
        """Features (F, T) and posteriors (T, K) of the frames that `span` (S,) holds exactly."""
        if self._step is not None:
            features, posteriors, *state = self._step(span, *self._state)  # (T, F), (T, K)
            self._state = tuple(state)
            return features.T, posteriors  # (T, F) -> (F, T)
        with torch.inference_mode():
            # (S,) -> (1, S); out (1, F, T) and (1, T, K)
            features, logits, self._state = self.model.infer(
                span.to(self._device)[None], self._state
            )
            return features[0].cpu(), logits[0].softmax(dim=-1).cpu()


def stream_posteriors(
    model: SpeechClassifier, samples: Tensor | np.ndarray, chunk_samples: int = 16000
) -> Tensor:
    """Per-frame posteriors (T, K) of a recording of any length, fed in chunks of `chunk_samples`
    (memory stays bounded by the chunk size)."""
    if chunk_samples <= 0:
        raise ValueError(f"chunk_samples must be positive, got {chunk_samples}")
    streamer = Streamer(model)
    samples = torch.as_tensor(samples, dtype=torch.float32)
    chunks = range(0, len(samples), chunk_samples)
    posts = [streamer.push(samples[i : i + chunk_samples]).posteriors for i in chunks]
    return torch.cat(posts) if posts else torch.zeros(0, streamer.num_classes)
