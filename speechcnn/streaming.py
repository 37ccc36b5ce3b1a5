"""Exact streaming inference: audio chunks in, per-frame class posteriors out.

The front end convolves over frequency only and the features are not centred, so frame t of
the CNN output is a function of samples [t * hop, t * hop + n_fft) alone. A unidirectional LSTM
then needs nothing from the future: carrying the STFT's overlap (the last n_fft - hop samples)
and the LSTM's (h, c) between chunks gives, chunk by chunk, the same frames and posteriors as
the offline model on the whole recording (up to float rounding; the tests check 1e-5).

The per-frame posterior at frame t is softmax(classifier(LSTM output at t)), what "last"
pooling computes at a clip's final frame: at the last frame of a clip it equals the softmax of
the offline logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from speechcnn.model import LSTMHead, SpeechClassifier


class NotStreamableError(ValueError):
    """A model whose outputs at frame t depend on frames after t."""


def check_streamable(model: SpeechClassifier) -> None:
    """Raise `NotStreamableError` saying why `model` cannot stream and what to change."""
    head = model.head
    if not isinstance(head, LSTMHead):
        raise NotStreamableError(f"streaming needs an LSTMHead, got {type(head).__name__}")
    reasons = []
    if head.bidirectional:
        reasons.append(
            "the LSTM is bidirectional: its backward direction reads the recording from the "
            "end, so no output exists until the audio has ended"
        )
    if head.pooling != "last":
        reasons.append(
            f"pooling is {head.pooling!r}: it pools over the whole utterance, so the logits "
            "exist only once the utterance is over"
        )
    if reasons:
        raise NotStreamableError(
            "model cannot stream: "
            + "; ".join(reasons)
            + ". Train with net.bidirectional=false and net.pooling=last (the default "
            "configuration): its logits are the LSTM's output at the final frame, and the "
            "streamer emits that for every frame."
        )


@torch.no_grad()
def offline_posteriors(model: SpeechClassifier, waveforms: Tensor) -> Tensor:
    """Per-frame class posteriors of whole recordings, the reference the streamer must equal.

    Args:
        model: a streamable classifier (unidirectional LSTM, "last" pooling), in eval mode.
        waveforms: (B, S) float waveforms, S >= n_fft.

    Returns:
        (B, T, K) softmax of the classifier applied to the LSTM output at every frame.
    """
    check_streamable(model)
    outputs, _ = model.head.lstm(model.embed(waveforms))  # (B, T, H)
    return model.head.classifier(outputs).softmax(dim=-1)  # (B, T, K)


@dataclass
class StreamStep:
    """What one `Streamer.push` produced: the frames completed by the chunk.

    Attributes:
        features: (F, T) log-mel frames (before the input norm), T >= 0.
        posteriors: (T, K) class posteriors at those frames.
        first_frame: index of the first of these frames in the whole stream.
    """

    features: Tensor
    posteriors: Tensor
    first_frame: int


class Streamer:
    """Stateful streaming classifier over one audio stream.

    Push chunks of any size (1 sample to minutes); each call returns the frames the chunk
    completed. Samples that do not yet complete a frame, and the n_fft - hop samples that the
    next frame shares with this one, are kept for the next call; the LSTM state is carried.

    Args:
        model: a trained `SpeechClassifier` with a unidirectional LSTM and "last" pooling
            (put in eval mode and left there; the streamer never trains).
        max_frames_per_step: frames sent through the front end at once (bounds memory for
            very long chunks; any value gives the same result).

    Raises:
        NotStreamableError: the model's outputs depend on future frames (see the message).
    """

    def __init__(self, model: SpeechClassifier, max_frames_per_step: int = 1000) -> None:
        check_streamable(model)
        if max_frames_per_step <= 0:
            raise ValueError(f"max_frames_per_step must be positive, got {max_frames_per_step}")
        self.model = model.eval()
        features = model.features
        self.sample_rate: int = features.sample_rate
        self.n_fft: int = features.n_fft
        self.hop: int = features.hop_length
        self.max_frames_per_step = max_frames_per_step
        self.num_classes: int = model.head.classifier.out_features
        self.reset()

    def reset(self) -> None:
        """Forget the stream: no pending samples, zero LSTM state, frame count 0."""
        self._pending = torch.zeros(0)
        self._state: tuple[Tensor, Tensor] | None = None
        self.frames_done = 0
        self.samples_seen = 0

    def frame_end_time(self, frame: int | Tensor | np.ndarray) -> float | Tensor | np.ndarray:
        """Time in seconds of the last sample that frame index `frame` covers (its end)."""
        return (frame * self.hop + self.n_fft) / self.sample_rate

    @torch.no_grad()
    def push(self, chunk: Tensor | np.ndarray) -> StreamStep:
        """Feed the next samples of the stream.

        Args:
            chunk: (S,) float samples in [-1, 1], S >= 0, at the model's sample rate.

        Returns:
            The frames this chunk completed: features (F, T) and posteriors (T, K).
        """
        chunk = torch.as_tensor(chunk, dtype=torch.float32)
        if chunk.dim() != 1:
            raise ValueError(f"expected a chunk of shape (S,), got {tuple(chunk.shape)}")
        self.samples_seen += chunk.shape[0]
        pending = torch.cat([self._pending, chunk]) if self._pending.numel() else chunk
        n_frames = (
            0 if pending.shape[0] < self.n_fft else (pending.shape[0] - self.n_fft) // self.hop + 1
        )
        first = self.frames_done
        feats, posts = [], []
        start = 0
        while n_frames > 0:
            n = min(n_frames, self.max_frames_per_step)
            span = pending[start : start + (n - 1) * self.hop + self.n_fft]
            f, p = self._frames(span)
            feats.append(f)
            posts.append(p)
            start += n * self.hop
            n_frames -= n
            self.frames_done += n
        # Keep everything from the next frame's first sample on: the STFT overlap, and any
        # samples that did not yet fill a frame. clone() so the chunk's storage can be freed.
        self._pending = pending[start:].clone()
        if not feats:
            n_feat = self.model.features.out_features
            return StreamStep(torch.zeros(n_feat, 0), torch.zeros(0, self.num_classes), first)
        return StreamStep(torch.cat(feats, dim=1), torch.cat(posts, dim=0), first)

    def _frames(self, span: Tensor) -> tuple[Tensor, Tensor]:
        """Features (F, T) and posteriors (T, K) of the frames that `span` (S,) holds exactly."""
        model = self.model
        features = model.features.from_mel_energies(model.features.mel_energies(span[None]))
        embedded = model.frontend(model.input_norm(features))  # (1, F, T) -> (1, T, D)
        outputs, self._state = model.head.lstm(embedded, self._state)  # (1, T, H)
        posteriors = model.head.classifier(outputs[0]).softmax(dim=-1)  # (T, K)
        return features[0], posteriors


def stream_posteriors(
    model: SpeechClassifier, samples: Tensor | np.ndarray, chunk_samples: int = 16000
) -> Tensor:
    """Per-frame posteriors (T, K) of a recording of any length, fed in chunks of `chunk_samples`.

    Memory stays bounded by the chunk size, so hours of audio are fine.
    """
    if chunk_samples <= 0:
        raise ValueError(f"chunk_samples must be positive, got {chunk_samples}")
    streamer = Streamer(model)
    samples = torch.as_tensor(samples, dtype=torch.float32)
    steps = [
        streamer.push(samples[i : i + chunk_samples]) for i in range(0, len(samples), chunk_samples)
    ]
    posts = [s.posteriors for s in steps]
    return torch.cat(posts) if posts else torch.zeros(0, streamer.num_classes)


__all__ = [
    "NotStreamableError",
    "StreamStep",
    "Streamer",
    "check_streamable",
    "offline_posteriors",
    "stream_posteriors",
]
