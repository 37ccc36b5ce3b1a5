"""Any labelled audio as a data set: a folder with one sub-folder per class, or a CSV manifest.

Clips may have any sample rate, channel count and length: they are resampled, downmixed and
kept at their own length (a batch is padded to its longest clip and carries the lengths, which
the model honours). Without a split in the manifest, each file goes to train/val/test by a hash
of its path (or of a group key such as the speaker), so the split is deterministic and stays
put when files are added.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, default_collate

from speechcnn.data.clips import Batch, BatchAugment, ClipDataset, ClipSet, decode_clips, to_float

if TYPE_CHECKING:  # the check module imports this one at run time
    from speechcnn.data.check import CheckReport

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".mp3")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "eval": "test",
}


class FolderDataError(ValueError):
    """A folder or manifest that cannot be used as a labelled data set."""


@dataclass(frozen=True)
class Item:
    """One labelled file: its path, class name and split (None: decided by hash)."""

    path: Path
    label: str
    split: str | None = None


def index_class_folders(root: str | Path) -> list[Item]:
    """Audio files under `root/<class>/` (any depth below the class folder), labelled by it."""
    root = Path(root)
    if not root.is_dir():
        raise FolderDataError(f"data folder {root} does not exist")
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file():
                items.append(Item(path, folder.name))
    if not items:
        raise FolderDataError(
            f"{root} holds no audio files ({', '.join(AUDIO_SUFFIXES)}) in class sub-folders: "
            "expected ROOT/<class name>/<file>, or pass a CSV manifest"
        )
    return items


def index_manifest(manifest: str | Path, root: str | Path | None = None) -> list[Item]:
    """Rows of a CSV manifest with a header `path,label[,split]`.

    Paths are relative to `root` (default: the manifest's folder) unless absolute. Split values
    are train/val/test (also training, valid, validation, dev, testing, eval); empty: by hash.
    """
    manifest = Path(manifest)
    base = Path(root) if root is not None else manifest.parent
    if not manifest.is_file():
        raise FolderDataError(f"manifest {manifest} does not exist")
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        fields = [name.strip().lower() for name in reader.fieldnames or []]
        if "path" not in fields or "label" not in fields:
            raise FolderDataError(
                f"{manifest}: expected a header row with columns path,label[,split], got {fields}"
            )
        items = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if not row["path"] or not row["label"]:
                raise FolderDataError(f"{manifest}:{line}: empty path or label")
            split = row.get("split") or None
            if split is not None:
                if split.lower() not in SPLIT_ALIASES:
                    raise FolderDataError(
                        f"{manifest}:{line}: split {split!r} is not one of train/val/test"
                    )
                split = SPLIT_ALIASES[split.lower()]
            path = Path(row["path"])
            items.append(Item(path if path.is_absolute() else base / path, row["label"], split))
    if not items:
        raise FolderDataError(f"{manifest} lists no files")
    return items


def hash_split(key: str, val_percent: float, test_percent: float) -> str:
    """train/val/test for `key` by a stable hash: the same key always lands in the same split."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10000 / 100.0  # [0, 100)
    if bucket < test_percent:
        return "test"
    if bucket < test_percent + val_percent:
        return "val"
    return "train"


class LengthBucketSampler(Sampler[list[int]]):
    """Shuffled batches of clips of similar length, so little of a batch is padding.

    Each epoch shuffles the clips, sorts each window of `batch_size * window` clips by length,
    cuts it into batches and shuffles the batches.

    Args:
        lengths: (N,) valid samples per clip.
        batch_size: clips per batch.
        drop_last: leave out a last, smaller batch of each window.
        window: batches per sorted window (1: plain shuffled batches).
        seed: base seed; the epoch counter is added so every epoch differs.
    """

    def __init__(
        self, lengths: Tensor, batch_size: int, drop_last: bool, window: int = 50, seed: int = 0
    ) -> None:
        if batch_size <= 0 or window <= 0:
            raise ValueError(f"batch_size and window must be positive, got {batch_size}, {window}")
        self.lengths = lengths
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.window = window
        self.seed = seed
        self.epoch = 0

    def _batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            for b in range(0, len(chunk), self.batch_size):
                batch = chunk[b : b + self.batch_size].tolist()
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        shuffle = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffle]

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size * self.window)
        per_window = self.window
        tail = rest // self.batch_size + (0 if self.drop_last or rest % self.batch_size == 0 else 1)
        return full * per_window + tail

    def __iter__(self):  # noqa: ANN204 (a generator of index lists)
        batches = self._batches()
        self.epoch += 1
        yield from batches


def collate_trimmed(batch: list[Batch]) -> Batch:
    """Stack clips and drop the padding columns past the longest clip of this batch."""
    waveforms, lengths, labels = default_collate(batch)
    return waveforms[:, : int(lengths.max())], lengths, labels


class LabelledAudioDataModule(pl.LightningDataModule):
    """Labelled audio from class sub-folders or a CSV manifest, at any rate and length.

    Args:
        root: folder with one sub-folder per class (or the base of the manifest's paths).
        manifest: CSV file with columns path,label[,split]; replaces the folder scan.
        classes: class names in label order (default: the sorted labels found); files of
            other labels are left out.
        sample_rate: sample rate the model sees; other rates are resampled.
        max_seconds: longer clips are cut to this length (None: keep every clip whole).
        min_seconds: shorter clips are zero-padded to this length, so every clip gives frames.
        val_percent: share of files (or groups) for validation when no split is given.
        test_percent: share of files (or groups) for testing when no split is given.
        group_pattern: regular expression on the file name whose first group (or whole match)
            is hashed instead of the path, so e.g. one speaker's files share a split.
        batch_size: clips per batch.
        num_workers: DataLoader workers (clips are decoded in memory: 0 is fastest).
        time_shift_ms: maximum random time shift in training (0: none).
        check: run the data check (cached) before decoding and leave out unusable files.
    """

    def __init__(
        self,
        root: str = "data/audio",
        manifest: str | None = None,
        classes: list[str] | None = None,
        sample_rate: int = 16000,
        max_seconds: float | None = None,
        min_seconds: float = 0.1,
        val_percent: float = 10.0,
        test_percent: float = 10.0,
        group_pattern: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        time_shift_ms: float = 0.0,
        check: bool = True,
    ) -> None:
        super().__init__()
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
        if min_seconds < 0:
            raise ValueError(f"min_seconds must be >= 0, got {min_seconds}")
        if not (0 <= val_percent and 0 <= test_percent and val_percent + test_percent < 100):
            raise ValueError(
                f"need val_percent, test_percent >= 0 summing below 100, got {val_percent}, "
                f"{test_percent}"
            )
        self.root = Path(root)
        self.manifest = manifest
        self.sample_rate = sample_rate
        self.max_samples = None if max_seconds is None else round(max_seconds * sample_rate)
        self.min_samples = round(min_seconds * sample_rate)
        self.val_percent = val_percent
        self.test_percent = test_percent
        self.group_pattern = re.compile(group_pattern) if group_pattern else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.check = check
        self.augment = BatchAugment(
            shift_samples=round(sample_rate * time_shift_ms / 1000), noise_prob=0.0
        )
        self.items = self.index()
        found = sorted({item.label for item in self.items})
        self.class_names = list(classes) if classes is not None else found
        if len(self.class_names) < 2:
            raise FolderDataError(f"{self.root}: need at least 2 classes, found {found}")
        self.num_classes = len(self.class_names)
        self.clips: dict[str, ClipSet] = {}
        self.check_report: CheckReport | None = None

    def index(self) -> list[Item]:
        """Every labelled file (subclasses override this for other layouts)."""
        if self.manifest is not None:
            return index_manifest(self.manifest, self.root if self.root.is_dir() else None)
        return index_class_folders(self.root)

    def split_of(self, item: Item) -> str:
        """The split of an item: its own, else a hash of its group key or path."""
        if item.split is not None:
            return item.split
        if self.group_pattern is not None:
            key = self._group(item.path.name)
        else:
            try:
                key = item.path.relative_to(self.root).as_posix()
            except ValueError:  # a manifest path outside root
                key = item.path.as_posix()
        return hash_split(key, self.val_percent, self.test_percent)

    def _group(self, name: str) -> str:
        match = self.group_pattern.search(name)
        if match is None:
            return name
        return match.group(1) if match.groups() else match.group(0)

    def split_items(self, split: str) -> list[tuple[Path, int]]:
        """(path, label) of a split's files, leaving out labels outside `class_names`."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        label_of = {name: i for i, name in enumerate(self.class_names)}
        return [
            (item.path, label_of[item.label])
            for item in self.items
            if item.label in label_of and self.split_of(item) == split
        ]

    def run_check(self) -> None:
        """Check every file once (cached), log the summary and remember the unusable files."""
        from speechcnn.data.check import check_items  # here: the check imports this module

        items = [(item.path, item.label, self.split_of(item)) for item in self.items]
        self.check_report = check_items(
            items, self.root, self.sample_rate, max_samples=self.max_samples
        )
        self.check_report.log_summary()

    def _load(self, split: str) -> ClipSet:
        if split in self.clips:
            return self.clips[split]
        items = self.split_items(split)
        if self.check and self.check_report is None:
            self.run_check()
        skipped = []
        if self.check_report is not None:
            skipped = self.check_report.unusable_in([str(p) for p, _ in items])
            unusable = self.check_report.unusable_paths()
            items = [(p, label) for p, label in items if str(p) not in unusable]
        clips = self._fit(decode_clips(items, self.sample_rate, None))
        clips.skipped = skipped + list(clips.skipped)
        if len(clips) == 0:
            raise FolderDataError(f"no usable clips in the {split} split of {self.root}")
        counts = torch.bincount(clips.labels, minlength=self.num_classes).tolist()
        log.info("%s: %d clips, per class %s", split, len(clips), counts)
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
        if stage in (None, "fit"):
            self._load("train")
        if stage in (None, "fit", "validate"):
            self._load("val")
        if stage in (None, "test", "predict"):
            self._load("test")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        clips = self._load(split)
        if shuffle:
            # Similar lengths per batch: padding to the longest clip costs little compute.
            sampler = LengthBucketSampler(
                clips.lengths, self.batch_size, drop_last=len(clips) > self.batch_size
            )
            options = {"batch_sampler": sampler}
        else:
            options = {"batch_size": self.batch_size, "shuffle": False}
        return DataLoader(
            ClipDataset(clips),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_trimmed,
            **options,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Float conversion, and in training the time shift, on the batch's device."""
        waveforms, lengths, labels = batch
        waveforms = to_float(waveforms)
        if self.trainer is not None and self.trainer.training and self.augment.shift_samples:
            waveforms = self.augment.to(waveforms.device)(waveforms, lengths)
        return waveforms, lengths, labels
