"""Decoded clips held in memory as int16 rows of an (N, S) tensor, and their batches: row
selections (int16 waveforms, lengths, labels), converted to float once on the device."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset, default_collate

from speechcnn.data.audio import AudioError, fit_length, read_audio

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor, Tensor]  # (B, S) int16 or float waveforms, (B,) lengths, (B,) labels
Items = Sequence[tuple[str | Path, int]]  # (path, label) of audio files
Decoded = tuple[np.ndarray, int, str]  # float samples, label, path or name of a decoded clip
Extra = Sequence[Decoded]  # already decoded clips a split gets besides its files, e.g. silence


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


def iter_decoded(items: Items, sample_rate: int, skipped: list[str]) -> Iterator[Decoded]:
    """Decode (path, label) items one at a time; unusable files are logged, appended to
    `skipped` ("path: reason") and left out, never raised."""
    for path, label in items:
        try:
            samples = read_audio(path, sample_rate)
        except AudioError as error:
            log.warning("skipping %s", error)
            skipped.append(str(error))
            continue
        yield samples, label, str(path)


def loudest_window(samples: np.ndarray, num_samples: int) -> np.ndarray:
    """The `num_samples` window of most energy, in 10 ms steps; shorter audio is centred in
    zeros. Recordings have silence around the phrase, so this window holds the phrase."""
    if len(samples) <= num_samples:
        pad = num_samples - len(samples)
        return np.pad(samples, (pad // 2, pad - pad // 2))
    step = max(1, num_samples // 150)  # about 10 ms for a 1.5 s window
    n, width = len(samples) // step, num_samples // step
    energy = np.square(samples[: n * step]).reshape(n, step).sum(axis=1)  # (frames,)
    totals = np.convolve(energy, np.ones(width), mode="valid")  # (frames - width + 1,)
    start = min(int(np.argmax(totals)) * step, len(samples) - num_samples)
    return samples[start : start + num_samples]


def decode_clips(
    items: Items, sample_rate: int, num_samples: int | None, extra: Extra = ()
) -> ClipSet:
    """Decode items (resampled to `sample_rate`) and append `extra` into a ClipSet, every clip
    padded/trimmed to `num_samples` (None: padded to the longest); unusable files left out."""
    skipped: list[str] = []
    decoded = list(chain(iter_decoded(items, sample_rate, skipped), extra))
    lengths = [len(s) if num_samples is None else min(len(s), num_samples) for s, _, _ in decoded]
    width = num_samples if num_samples is not None else max(lengths, default=0)
    waveforms = np.zeros((len(decoded), width), dtype=np.int16)
    for i, (samples, _, _) in enumerate(decoded):
        waveforms[i] = to_int16(fit_length(samples, width))
    return ClipSet(
        waveforms=torch.from_numpy(waveforms),
        lengths=torch.tensor(lengths, dtype=torch.long),
        labels=torch.tensor([label for _, label, _ in decoded], dtype=torch.long),
        paths=[path for _, _, path in decoded],
        skipped=skipped,
    )


def collate_trimmed(batch: list[Batch]) -> Batch:
    """Stack clips and drop the padding columns past the longest clip of this batch."""
    waveforms, lengths, labels = default_collate(batch)
    return waveforms[:, : int(lengths.max())], lengths, labels


class ClipDataset(TensorDataset):
    """Map-style view of a ClipSet: item i is (int16 waveform (S,), length, label)."""

    def __init__(self, clips: ClipSet) -> None:
        super().__init__(clips.waveforms, clips.lengths, clips.labels)


def to_float(waveforms: Tensor) -> Tensor:
    """int16 waveforms to float32 in [-1, 1]; float input is returned unchanged."""
    return waveforms.float() / 32768.0 if waveforms.dtype == torch.int16 else waveforms


class ShardedBatchSampler:
    """Index batches of one rank's shard of a split, reshuffled every epoch (`set_epoch`).

    All ranks draw the same permutation. With `drop_last` (training) every rank gets the same
    number of full batches, as DDP needs; without, the ranks' chunks cover the split once. With
    `lengths`, each shuffled window of `batch_size * window` clips is sorted by length before it
    is cut and the batches are shuffled, so a batch trimmed to its longest clip has little padding.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        lengths: Tensor | None = None,
        window: int = 50,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        if lengths is not None and len(lengths) != size:
            raise ValueError(f"lengths has {len(lengths)} entries for {size} clips")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank=}, {world_size=}")
        self.size, self.batch_size = size, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.lengths = lengths if shuffle else None  # evaluation keeps the split's order
        self.window, self.epoch = window, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.arange(self.size)
        if self.shuffle:
            order = torch.randperm(self.size, generator=generator)
        if self.drop_last:
            per_rank = self.size // self.world_size
            shard = order[self.rank : per_rank * self.world_size : self.world_size]
        else:
            start, stop = (self.size * r // self.world_size for r in (self.rank, self.rank + 1))
            shard = order[start:stop]
        # drop_last keeps a short final batch only when the shard holds no full batch at all.
        drop, b = self.drop_last and len(shard) >= self.batch_size, self.batch_size
        span = b * self.window if self.lengths is not None else max(len(shard), 1)
        batches = []
        for first in range(0, len(shard), span):
            chunk = shard[first : first + span]
            if self.lengths is not None:
                chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            starts = range(0, len(chunk) - b + 1 if drop else len(chunk), b)
            batches += [chunk[i : i + b] for i in starts]
        if self.lengths is not None:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return batches

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self):  # noqa: ANN204 (a generator of (B,) int64 index tensors)
        yield from self._batches()


class ResidentBatches:
    """Batches selected on the training device (the ClipSet is copied there once), with `trim`
    cut to their longest clip. Not a DataLoader: Lightning passes it through unchanged (no
    DistributedSampler: `sampler` already shards per rank)."""

    def __init__(
        self,
        clips: ClipSet,
        sampler: ShardedBatchSampler,
        device: torch.device | str,
        trim: bool = False,
    ) -> None:
        if sampler.size != len(clips):
            raise ValueError(f"sampler covers {sampler.size} clips, the split has {len(clips)}")
        self.clips, self.sampler, self.trim = clips, sampler, trim
        self.batch_sampler = None  # read by Lightning: `sampler` yields whole index batches
        self.device = torch.device(device)
        self._tensors: tuple[Tensor, Tensor, Tensor] | None = None

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """(N, S) int16 waveforms, (N,) lengths, (N,) labels on the device (copied once)."""
        if self._tensors is None:
            c = self.clips
            self._tensors = tuple(t.to(self.device) for t in (c.waveforms, c.lengths, c.labels))
        return self._tensors

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):  # noqa: ANN204 (a generator of Batch)
        waveforms, lengths, labels = self.tensors()
        for index in self.sampler:
            index = index.to(self.device, non_blocking=True)
            width = int(lengths[index].max()) if self.trim and len(index) else waveforms.shape[1]
            yield waveforms[index, :width], lengths[index], labels[index]


def split_nbytes(clips: ClipSet) -> int:
    """Bytes the split takes on a device (waveforms, lengths and labels)."""
    return sum(t.numel() * t.element_size() for t in (clips.waveforms, clips.lengths, clips.labels))


def fits_on_device(nbytes: int, device: torch.device, fraction: float = 0.5) -> tuple[bool, str]:
    """Whether a split of `nbytes` may live on `device` (up to `fraction` of the free CUDA
    memory: the rest is for the activations; on the CPU it is in host memory already), and why."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        ok = nbytes <= fraction * free
        return ok, f"{nbytes / 1e9:.2f} GB vs {free / 1e9:.1f} GB free on {device}"
    if device.type == "cpu":
        return True, f"{nbytes / 1e9:.2f} GB in host memory"
    return False, f"no memory query for device type {device.type!r}"


def make_loader(
    clips: ClipSet,
    batch_size: int,
    shuffle: bool,
    device: torch.device | str,
    resident: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_workers: int = 0,
    name: str = "split",
    trim: bool = False,
) -> ResidentBatches | DataLoader:
    """A loader for one split: device-resident batches when the split fits (`resident` None;
    True or False forces the choice), else a DataLoader. `shuffle`: training order, full batches
    only. `trim`: batches group clips of similar length and are cut to their longest clip."""
    device = torch.device(device)
    fits, why = fits_on_device(split_nbytes(clips), device)
    use_resident = fits if resident is None else resident
    if use_resident:
        forced = "" if resident is None else "; forced by resident=True"
        log.info("%s: %d clips resident on %s, batches are index selections (%s%s)", name,
                 len(clips), device, why, forced)  # fmt: skip
    if use_resident or trim:
        sampler = ShardedBatchSampler(
            len(clips), batch_size, shuffle, shuffle, rank, world_size, seed,
            lengths=clips.lengths if trim else None,
        )  # fmt: skip
    if use_resident:
        return ResidentBatches(clips, sampler, device, trim=trim)
    why = "forced by resident=False" if resident is False else f"does not fit: {why}"
    log.info("%s: %d clips through a per-item DataLoader with %d workers (%s)", name, len(clips),
             num_workers, why)  # fmt: skip
    if trim:
        batching = {"batch_sampler": sampler, "collate_fn": collate_trimmed}
    else:
        batching = {"batch_size": batch_size, "shuffle": shuffle,
                    "drop_last": shuffle and len(clips) > batch_size}  # fmt: skip
    return DataLoader(
        ClipDataset(clips), num_workers=num_workers, persistent_workers=num_workers > 0,
        pin_memory=device.type == "cuda", **batching,
    )  # fmt: skip
