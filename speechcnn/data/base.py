"""The data module every data set subclasses, supplying only `split_items`, `extra_clips`,
`noise` and `data_check`: clips decoded once into the waveform store, splits on the device."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from speechcnn.data.check import CheckReport
from speechcnn.data.clips import (
    Batch,
    ClipSet,
    Extra,
    Items,
    ResidentBatches,
    decode_clips,
    make_loader,
    to_float,
)
from speechcnn.data.store import cached_clips, default_cache_dir

log = logging.getLogger(__name__)


class ClipDataModule(pl.LightningDataModule):
    """Labelled clips of train/val/test splits, decoded once and batched on the device.

    Args:
        root: the data folder (also where the waveform store lives by default).
        class_names: class names in label order.
        sample_rate: sample rate the model sees (clips at other rates are resampled).
        num_samples: pad/trim every clip to this length (None: each keeps its own length).
        max_samples: with num_samples None, longer clips are cut to this length (None: whole).
        min_samples: with num_samples None, shorter clips count as zero-padded to this length.
        batch_size: clips per batch.
        num_workers: DataLoader workers (clips are already decoded in memory: 0 is fastest).
        seed: seed of the training batch order (and of a data set's own random choices).
        cache: decode every clip once into the waveform store and memory-map it on later runs.
        cache_dir: store folder (None: `<root>/.speechcnn_cache`, or ~/.cache/speechcnn/...).
        resident: keep splits on the training device (True), use a DataLoader (False) or choose.
        check: run the data check (`speechcnn check-data`) first and leave out unusable files.
    """

    name = "clips"  # waveform store entries are named `<name>-<split>`
    data_error: type[ValueError] = ValueError  # raised for a split without usable clips

    def __init__(
        self,
        root: str,
        class_names: list[str],
        sample_rate: int,
        num_samples: int | None,
        max_samples: int | None = None,
        min_samples: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        cache: bool = True,
        cache_dir: str | None = None,
        resident: bool | None = None,
        check: bool = True,
    ) -> None:
        super().__init__()
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.root = Path(root)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.sample_rate = sample_rate
        self.num_samples, self.max_samples, self.min_samples = num_samples, max_samples, min_samples
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.cache, self.cache_dir, self.resident, self.check = cache, cache_dir, resident, check
        self.check_report: CheckReport | None = None
        self.unusable: set[str] = set()  # paths the data check found unusable
        self.clips: dict[str, ClipSet] = {}
        self.training_noise: Tensor | None = None  # noise() concatenated, read by setup("fit")

    def split_items(self, split: str) -> Items:
        """(path, label) of the files of a split."""
        raise NotImplementedError

    def extra_clips(self, split: str) -> Extra:
        """Already decoded (float samples, label, name) clips a split gets besides its files."""
        return []

    def noise(self) -> list[np.ndarray]:
        """Background-noise recordings to mix into training clips (none by default)."""
        return []

    def data_check(self, cache: bool = True) -> CheckReport:
        """The data check of every file of the data set."""
        raise NotImplementedError

    def entry_name(self, split: str) -> str:
        """Name of a split's waveform store entry (one live entry per name)."""
        return f"{self.name}-{split}"

    def run_check(self) -> None:
        """Check every file once (cached), log the summary, leave unusable files out."""
        self.check_report = self.data_check()
        self.check_report.log_summary()
        self.unusable = self.check_report.unusable_paths()

    def store_dir(self) -> Path:
        """Folder of the waveform store (see `cache_dir`); logs where it is and why."""
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        folder = default_cache_dir(self.root)
        if not folder.is_relative_to(self.root.resolve()):
            log.info("data root %s is not writable: waveform cache in %s", self.root, folder)
        return folder

    def _load(self, split: str) -> ClipSet:
        if split in self.clips:
            return self.clips[split]
        items = self.split_items(split)
        skipped = self.check_report.unusable_in([str(p) for p, _ in items]) if self.unusable else []
        items = [(path, label) for path, label in items if str(path) not in self.unusable]
        decode, extra = (items, self.sample_rate, self.num_samples), self.extra_clips(split)
        if self.cache:
            clips = cached_clips(*decode, self.store_dir(), self.entry_name(split), extra=extra)
        else:
            clips = decode_clips(*decode, extra=extra)
        if self.num_samples is None:
            clips = self._fit(clips)
        clips.skipped = skipped + list(clips.skipped)
        if len(clips) == 0:
            raise self.data_error(f"no usable clips in the {split} split of {self.root}")
        counts = torch.bincount(clips.labels, minlength=self.num_classes).tolist()
        log.info(
            "%s: %d clips (%d skipped), per class %s", split, len(clips), len(clips.skipped), counts
        )
        self.clips[split] = clips
        return clips

    def _fit(self, clips: ClipSet) -> ClipSet:
        """Cut clips longer than max_samples; count clips shorter than min_samples as padded."""
        if self.max_samples is not None and clips.waveforms.shape[1] > self.max_samples:
            clips.waveforms = clips.waveforms[:, : self.max_samples].contiguous()
            clips.lengths = clips.lengths.clamp(max=self.max_samples)
        if clips.waveforms.shape[1] < self.min_samples:
            pad = self.min_samples - clips.waveforms.shape[1]
            clips.waveforms = torch.nn.functional.pad(clips.waveforms, (0, pad))
        clips.lengths = clips.lengths.clamp(min=self.min_samples)
        return clips

    def setup(self, stage: str | None = None) -> None:
        if self.check and self.check_report is None:
            self.run_check()
        if stage in (None, "fit"):
            self._load("train")
        if stage in (None, "fit", "validate"):
            self._load("val")
        if stage in (None, "fit") and self.training_noise is None:
            noise = self.noise()
            self.training_noise = torch.from_numpy(np.concatenate(noise)) if noise else None
        if stage in (None, "test", "predict"):
            self._load("test")

    def _loader(self, split: str, shuffle: bool) -> ResidentBatches | DataLoader:
        t = self.trainer
        device, rank, world_size = (
            ("cpu", 0, 1) if t is None else (t.strategy.root_device, t.global_rank, t.world_size)
        )
        return make_loader(
            self._load(split), self.batch_size, shuffle, device, self.resident, rank, world_size,
            self.seed, self.num_workers, name=split, trim=self.num_samples is None,
        )  # fmt: skip

    def train_dataloader(self) -> ResidentBatches | DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> ResidentBatches | DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> ResidentBatches | DataLoader:
        return self._loader("test", shuffle=False)

    predict_dataloader = test_dataloader

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Float conversion on the batch's device (augmentation is the model's)."""
        waveforms, lengths, labels = batch
        return to_float(waveforms), lengths, labels
