"""Any labelled audio as a data set: a folder with one sub-folder per class, or a CSV manifest.

Clips keep their own length (a batch is cut to its longest clip). Without a split in the
manifest, a file's split is a hash of its path or group key: stable when files are added.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechcnn.data.base import ClipDataModule, Items
from speechcnn.data.check import CheckReport, check_items
from speechcnn.data.clips import iter_decoded

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".mp3")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    **dict.fromkeys(("train", "training"), "train"),
    **dict.fromkeys(("val", "valid", "validation", "dev"), "val"),
    **dict.fromkeys(("test", "testing", "eval"), "test"),
}


class FolderDataError(ValueError):
    """A folder or manifest that cannot be used as a labelled data set."""


@dataclass(frozen=True)
class Item:
    """One labelled file: its path, class name and split (None: decided by hash)."""

    path: Path
    label: str
    split: str | None = None


def audio_files_under(root: str | Path) -> list[Path]:
    """Every audio file (`AUDIO_SUFFIXES`, any case) at any depth under `root`, sorted."""
    paths = Path(root).rglob("*")
    return sorted(p for p in paths if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def index_class_folders(root: str | Path) -> list[Item]:
    """Audio files under `root/<class>/` (any depth below the class folder), labelled by it."""
    root = Path(root)
    if not root.is_dir():
        raise FolderDataError(f"data folder {root} does not exist")
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        items += [Item(path, folder.name) for path in audio_files_under(folder)]
    if not items:
        raise FolderDataError(
            f"{root} holds no audio files ({', '.join(AUDIO_SUFFIXES)}) in class sub-folders: "
            "expected ROOT/<class name>/<file>, or pass a CSV manifest"
        )
    return items


def index_manifest(manifest: str | Path, root: str | Path | None = None) -> list[Item]:
    """Rows of a CSV manifest with a header `path,label[,split]`; relative paths are from `root`
    (default: the manifest's folder), an empty split is decided by hash (`SPLIT_ALIASES`)."""
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
            if split is not None and split.lower() not in SPLIT_ALIASES:
                raise FolderDataError(
                    f"{manifest}:{line}: split {split!r} is not one of train/val/test"
                )
            split, path = split and SPLIT_ALIASES[split.lower()], Path(row["path"])
            items.append(Item(path if path.is_absolute() else base / path, row["label"], split))
    if not items:
        raise FolderDataError(f"{manifest} lists no files")
    return items


def hash_split(key: str, val_percent: float, test_percent: float) -> str:
    """train/val/test for `key` by a stable hash: the same key always lands in the same split."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10000 / 100.0  # [0, 100)
    if bucket < test_percent:
        return "test"
    return "val" if bucket < test_percent + val_percent else "train"


class LabelledAudioDataModule(ClipDataModule):
    """Labelled audio from class sub-folders or a CSV manifest, at any rate and length.

    Args:
        root: folder with one sub-folder per class (or the base of the manifest's paths).
        manifest: CSV file with columns path,label[,split]; replaces the folder scan.
        classes: class names in label order, others left out (default: the sorted labels found).
        max_seconds: longer clips are cut to this length (None: keep every clip whole).
        min_seconds: shorter clips are zero-padded to this length, so every clip gives frames.
        val_percent: share of files (or groups) for validation when no split is given.
        test_percent: share of files (or groups) for testing when no split is given.
        group_pattern: regex on file names: files with one first group (or match) share a split.
        noise_dir: background-noise recordings that training mixes into clips (None: no noise).
        sample_rate, batch_size, num_workers, seed, cache, cache_dir, resident, check: as
            `ClipDataModule`'s.
    """

    name = "folder"
    data_error = FolderDataError

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
        noise_dir: str | None = None,
        seed: int = 0,
        cache: bool = True,
        cache_dir: str | None = None,
        resident: bool | None = None,
        check: bool = True,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
        if min_seconds < 0:
            raise ValueError(f"min_seconds must be >= 0, got {min_seconds}")
        if not (0 <= val_percent and 0 <= test_percent and val_percent + test_percent < 100):
            raise ValueError(
                f"need val_percent, test_percent >= 0 summing below 100, got {val_percent}, "
                f"{test_percent}"
            )
        self.root, self.manifest, self.noise_dir = Path(root), manifest, noise_dir
        self.val_percent, self.test_percent = val_percent, test_percent
        self.group_pattern = re.compile(group_pattern) if group_pattern else None
        self.items = self.index()
        found = sorted({item.label for item in self.items})
        names = list(classes) if classes is not None else found
        if len(names) < 2:
            raise FolderDataError(f"{self.root}: need at least 2 classes, found {found}")
        super().__init__(
            root, names, sample_rate, None,
            max_samples=None if max_seconds is None else round(max_seconds * sample_rate),
            min_samples=round(min_seconds * sample_rate), batch_size=batch_size,
            num_workers=num_workers, seed=seed, cache=cache, cache_dir=cache_dir,
            resident=resident, check=check,
        )  # fmt: skip
        if manifest is not None:
            self.name = f"folder-{Path(manifest).stem}"

    def index(self) -> list[Item]:
        """Every labelled file (subclasses override this for other layouts)."""
        if self.manifest is not None:
            return index_manifest(self.manifest, self.root if self.root.is_dir() else None)
        return index_class_folders(self.root)

    def split_of(self, item: Item) -> str:
        """The split of an item: its own, else a hash of its group key or path."""
        if item.split is not None:
            return item.split
        path, key = item.path, item.path.as_posix()  # whole, for a manifest path outside root
        if self.group_pattern is not None:
            match = self.group_pattern.search(path.name)
            key = path.name if match is None else match.group(1 if match.groups() else 0)
        elif path.is_relative_to(self.root):
            key = path.relative_to(self.root).as_posix()
        return hash_split(key, self.val_percent, self.test_percent)

    def split_items(self, split: str) -> Items:
        """(path, label) of a split's files, leaving out labels outside `class_names`."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        label_of = {name: i for i, name in enumerate(self.class_names)}
        items = [item for item in self.items if item.label in label_of]
        return [(i.path, label_of[i.label]) for i in items if self.split_of(i) == split]

    def noise(self) -> list[np.ndarray]:
        """The recordings of `noise_dir` (none without it)."""
        if self.noise_dir is None:
            return []
        files = [(p, 0) for p in audio_files_under(self.noise_dir)]
        noise = [samples for samples, _, _ in iter_decoded(files, self.sample_rate, skipped=[])]
        if not noise:
            raise FolderDataError(f"noise_dir {self.noise_dir} holds no readable recordings")
        return noise

    def data_check(self, cache: bool = True) -> CheckReport:
        items = [(item.path, item.label, self.split_of(item)) for item in self.items]
        return check_items(
            items, self.root, self.sample_rate, max_samples=self.max_samples, cache=cache,
            cache_dir=self.cache_dir,
        )  # fmt: skip
