"""Decoded clips held in memory, and the batched augmentation that runs on the model's device.

Every clip is decoded once into an int16 row of a (N, S) tensor. A batch is a row selection:
(int16 waveforms, lengths, labels). Conversion to float and augmentation (time shift and
background noise) happen after the batch reaches the device, on the whole batch at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from speechcnn.data.audio import AudioError, fit_length, read_audio

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor, Tensor]  # (B, S) int16 or float waveforms, (B,) lengths, (B,) labels


@dataclass
class ClipSet:
    """Decoded clips of one split: int16 waveforms padded to a common length."""

    waveforms: Tensor  # (N, S) int16
    lengths: Tensor  # (N,) int64 valid samples
    labels: Tensor  # (N,) int64
    paths: list[str]
    skipped: list[str] = field(default_factory=list)  # "path: reason" of files left out

    def __len__(self) -> int:
        return len(self.labels)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16, clipping out-of-range values."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def decode_clips(
    items: Sequence[tuple[str | Path, int]],
    sample_rate: int,
    num_samples: int | None,
    extra: Sequence[tuple[np.ndarray, int, str]] = (),
    progress: Callable[[int, int], None] | None = None,
) -> ClipSet:
    """Decode (path, label) items into a ClipSet.

    Args:
        items: audio files and their labels.
        sample_rate: target sample rate; other rates are resampled.
        num_samples: pad/trim every clip to this length (None: pad to the longest clip).
        extra: already decoded (float samples, label, name) clips to append, e.g. silence.
        progress: called as progress(done, total) while decoding.

    Files that cannot be used are logged with the reason and left out, never raised.
    """
    rows: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    skipped: list[str] = []
    for i, (path, label) in enumerate(items):
        try:
            samples = read_audio(path, sample_rate)
        except AudioError as error:
            log.warning("skipping %s", error)
            skipped.append(str(error))
            continue
        rows.append(samples)
        labels.append(label)
        paths.append(str(path))
        if progress is not None:
            progress(i + 1, len(items))
    for samples, label, name in extra:
        rows.append(samples)
        labels.append(label)
        paths.append(name)
    lengths = [len(r) if num_samples is None else min(len(r), num_samples) for r in rows]
    width = num_samples if num_samples is not None else max(lengths, default=0)
    waveforms = np.zeros((len(rows), width), dtype=np.int16)
    for i, row in enumerate(rows):
        waveforms[i] = to_int16(fit_length(row, width))
    return ClipSet(
        waveforms=torch.from_numpy(waveforms),
        lengths=torch.tensor(lengths, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        paths=paths,
        skipped=skipped,
    )


class ClipDataset(Dataset):
    """Map-style view of a ClipSet: item i is (int16 waveform (S,), length, label)."""

    def __init__(self, clips: ClipSet) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Batch:
        c = self.clips
        return c.waveforms[index], c.lengths[index], c.labels[index]


def to_float(waveforms: Tensor) -> Tensor:
    """int16 waveforms to float32 in [-1, 1]; float input is returned unchanged."""
    if waveforms.dtype == torch.int16:
        return waveforms.float() / 32768.0
    return waveforms


class BatchAugment(nn.Module):
    """Random time shift and background-noise mixing, for a whole batch on its device.

    Args:
        noise: 1-D float tensor of background noise recordings, concatenated (may be empty).
        shift_samples: shifts are drawn uniformly from [-shift_samples, shift_samples].
        noise_prob: probability that a clip gets noise mixed in.
        noise_volume: the noise gain is drawn uniformly from [0, noise_volume].
    """

    def __init__(
        self,
        noise: Tensor | None = None,
        shift_samples: int = 1600,
        noise_prob: float = 0.8,
        noise_volume: float = 0.1,
    ) -> None:
        super().__init__()
        if shift_samples < 0:
            raise ValueError(f"shift_samples must be >= 0, got {shift_samples}")
        if not 0.0 <= noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {noise_prob}")
        if noise_volume < 0:
            raise ValueError(f"noise_volume must be >= 0, got {noise_volume}")
        noise = torch.zeros(0) if noise is None else noise.float().flatten()
        self.register_buffer("noise", noise, persistent=False)
        self.shift_samples = shift_samples
        self.noise_prob = noise_prob
        self.noise_volume = noise_volume

    def forward(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """Augment a batch.

        Args:
            waveforms: (B, S) float waveforms.
            lengths: (B,) valid samples per clip; samples past a clip's length stay zero.

        Returns:
            (B, S) augmented waveforms.
        """
        batch, n = waveforms.shape
        device = waveforms.device
        positions = torch.arange(n, device=device)  # (S,)
        valid = positions < lengths[:, None]  # (B, S)
        if self.shift_samples > 0:
            shift = torch.randint(
                -self.shift_samples, self.shift_samples + 1, (batch, 1), device=device
            )
            source = positions - shift  # (B, S): output sample s reads input sample s - shift
            inside = (source >= 0) & (source < lengths[:, None])
            waveforms = torch.gather(waveforms, 1, source.clamp(0, n - 1)) * inside
        if self.noise.numel() > n and self.noise_prob > 0 and self.noise_volume > 0:
            start = torch.randint(0, self.noise.numel() - n, (batch, 1), device=device)
            noise = self.noise[start + positions]  # (B, S)
            gain = torch.rand(batch, 1, device=device) * self.noise_volume
            gain = gain * (torch.rand(batch, 1, device=device) < self.noise_prob)
            waveforms = (waveforms + gain * noise).clamp(-1.0, 1.0)
        return waveforms * valid
