"""Data check: find every bad audio file and split-list problem before training.

Each file's facts are cached by path, size and modification time, so a rerun only decodes the
files that changed. Problems are unusable (`UNUSABLE`, skipped by training), fixed on load
(`FIXABLE`) or in the split lists (`LIST_PROBLEMS`); `ACTIONS` says what is done about each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from speechcnn.data.store import cache_home

log = logging.getLogger(__name__)

CACHE_VERSION = 1
UNUSABLE = ("unreadable", "truncated", "empty", "silent", "non_finite")
FIXABLE = ("sample_rate", "channels", "too_long")
LIST_PROBLEMS = ("missing_listed", "split_overlap")
ACTIONS = {
    **dict.fromkeys(UNUSABLE, "skipped"),
    "sample_rate": "resampled on load",
    "channels": "downmixed on load",
    "too_long": "trimmed on load",
    "missing_listed": "ignored",
    "split_overlap": "kept in the first list only",
}


def wav_declared_frames(path: Path) -> int | None:
    """Frames the RIFF/WAVE header's data chunk declares (None: not a plain WAV header)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while len(chunk := f.read(8)) == 8:
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"fmt ":
                fmt = f.read(size + (size & 1))
                if len(fmt) >= 14:
                    block_align = struct.unpack("<H", fmt[12:14])[0]
            elif name == b"data":
                # 0 and 0xFFFFFFFF mark a header written by a stream that never finalised it
                final = block_align and size not in (0, 0xFFFFFFFF)
                return size // block_align if final else None
            else:
                f.seek(size + (size & 1), os.SEEK_CUR)
    return None


def file_facts(path: str | Path) -> dict:
    """What the check needs to know about one file, read once (the cached part)."""
    path = Path(path)
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        return {"error": str(error)}
    declared = wav_declared_frames(path) if path.suffix.lower() == ".wav" else None
    finite = bool(np.isfinite(samples).all())
    return {
        "rate": int(rate),
        "channels": int(samples.shape[1]),
        "frames": int(samples.shape[0]),
        "declared_frames": declared,
        "non_finite": not finite,
        "silent": bool(finite and samples.size > 0 and not np.any(samples)),
    }


def problems_of(facts: dict, sample_rate: int, long_seconds: float | None) -> list[str]:
    """Problem kinds of a file's facts, unusable ones first."""
    if "error" in facts:
        return ["unreadable"]
    frames, declared, non_finite = facts["frames"], facts["declared_frames"], facts["non_finite"]
    found = {
        "truncated": declared is not None and frames < declared,
        "empty": frames == 0,
        "non_finite": frames > 0 and non_finite,
        "silent": frames > 0 and not non_finite and facts["silent"],
        "sample_rate": facts["rate"] != sample_rate,
        "channels": facts["channels"] > 1,
        "too_long": long_seconds is not None and frames > long_seconds * facts["rate"],
    }
    return [kind for kind, present in found.items() if present]


def describe(kind: str, facts: dict, sample_rate: int, long_seconds: float | None) -> str:
    """A human sentence for one problem of one file."""
    if kind == "too_long":
        return f"{facts['frames'] / facts['rate']:.2f} s long, expected at most {long_seconds:g} s"
    return {
        "unreadable": "cannot be decoded ({error})",
        "truncated": "truncated: header declares {declared_frames} frames, file holds {frames}",
        "empty": "holds no samples",
        "silent": "all samples are zero",
        "non_finite": "holds NaN or infinite samples",
        "sample_rate": "sample rate {rate} Hz, expected {expected} Hz",
        "channels": "{channels} channels, expected mono",
    }[kind].format(**facts, expected=sample_rate)


@dataclass
class CheckReport:
    """Result of a data check; `files` maps each problem file to its problems."""

    root: str
    sample_rate: int
    long_seconds: float | None
    checked: int = 0
    files: dict[str, dict] = field(default_factory=dict)  # path -> {label, split, problems}
    missing_listed: list[str] = field(default_factory=list)
    split_overlap: list[str] = field(default_factory=list)
    cache_file: str | None = None

    def counts(self) -> Counter:
        """Files per problem kind."""
        counts = Counter(kind for entry in self.files.values() for kind in entry["problems"])
        counts["missing_listed"] = len(self.missing_listed)
        counts["split_overlap"] = len(self.split_overlap)
        return counts

    def unusable_paths(self) -> set[str]:
        """Paths of the files training leaves out."""
        return {p for p, entry in self.files.items() if set(entry["problems"]) & set(UNUSABLE)}

    def unusable_in(self, paths: Sequence[str]) -> list[str]:
        """'path: reason' of the unusable files among `paths`, as ClipSet.skipped holds them."""
        bad = self.unusable_paths()
        return [f"{p}: {'; '.join(self.files[p]['details'])}" for p in paths if p in bad]

    @property
    def ok(self) -> bool:
        """No unusable file and no split-list problem (fixable problems are fine)."""
        return not self.unusable_paths() and not self.missing_listed and not self.split_overlap

    def paths_with(self, kind: str) -> list[str]:
        """Sorted paths of the files with problem `kind`."""
        return sorted(p for p, entry in self.files.items() if kind in entry["problems"])

    def table(self, max_names: int = 20, per_kind: int = 3) -> str:
        """Summary table: files per problem and what training does, then the first files of each."""
        counts = self.counts()
        lines = [
            f"data check of {self.root}: {self.checked} files, expected {self.sample_rate} Hz mono"
            + (f", at most {self.long_seconds:g} s" if self.long_seconds else ""),
            f"{'problem':<16}{'files':>7}  action",
            *(f"{kind:<16}{counts[kind]:>7}  {action}" for kind, action in ACTIONS.items()),
        ]
        if skipped := sorted(self.unusable_paths()):
            lines.append(f"skipped files ({len(skipped)}):")
            lines += _first([f"  {row}" for row in self.unusable_in(skipped)], max_names)
        for kind in FIXABLE:
            if paths := self.paths_with(kind):
                files = f"{len(paths)} file" + ("s" if len(paths) > 1 else "")
                lines.append(f"{ACTIONS[kind]} ({kind}, {files}):")
                entries = [(p, self.files[p]) for p in paths]
                rows = [f"  {p}: {e['details'][e['problems'].index(kind)]}" for p, e in entries]
                lines += _first(rows, per_kind)
        for name, paths in (("listed but missing", self.missing_listed),
                            ("in both split lists", self.split_overlap)):  # fmt: skip
            if paths:
                shown = ", ".join(paths[:max_names]) + (" ..." if len(paths) > max_names else "")
                lines.append(f"{name} ({len(paths)}): {shown}")
        lines.append("OK" if self.ok else "problems found: unusable files are skipped in training")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The report as JSON-ready data."""
        return {
            "root": self.root,
            "sample_rate": self.sample_rate,
            "long_seconds": self.long_seconds,
            "checked": self.checked,
            "ok": self.ok,
            "counts": dict(self.counts()),
            "skipped": sorted(self.unusable_paths()),
            "fixed": {kind: self.paths_with(kind) for kind in FIXABLE},
            "files": self.files,
            "missing_listed": self.missing_listed,
            "split_overlap": self.split_overlap,
        }

    def write_json(self, path: str | Path) -> Path:
        """Write the JSON report (atomically) and return its path."""
        _atomic_write(path := Path(path), json.dumps(self.to_json(), indent=2) + "\n")
        return path

    def log_summary(self) -> None:
        """One log line when all is well, the whole table otherwise."""
        counts = self.counts()
        if not sum(counts.values()):
            log.info("data check of %s: %d files, no problems", self.root, self.checked)
        elif self.ok:
            fixed = ", ".join(f"{counts[k]} {k}" for k in FIXABLE if counts[k])
            log.info(
                "data check of %s: %d files; fixed on load: %s", self.root, self.checked, fixed
            )
        else:
            log.warning("%s", self.table())


def _first(rows: list[str], limit: int) -> list[str]:
    """The first `limit` rows, and a line counting the rest."""
    more = [f"  ... and {len(rows) - limit} more (see the JSON report)"]
    return rows[:limit] + (more if len(rows) > limit else [])


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def check_items(
    items: Sequence[tuple[str | Path, str, str]],
    root: str | Path,
    sample_rate: int,
    long_seconds: float | None = None,
    max_samples: int | None = None,
    missing_listed: Sequence[str] = (),
    split_overlap: Sequence[str] = (),
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> CheckReport:
    """Check (path, label, split) items, facts of unchanged files from the cache; files longer
    than `long_seconds` (or `max_samples`) are flagged; the caller finds split-list problems."""
    if long_seconds is None and max_samples is not None:
        long_seconds = max_samples / sample_rate
    digest = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]
    cache_file = Path(cache_dir or cache_home()) / "check" / f"{Path(root).name}-{digest}.json"
    try:
        data = json.loads(cache_file.read_text()) if cache else {}
    except (OSError, ValueError):
        data = {}
    cached = data.get("files", {}) if data.get("version") == CACHE_VERSION else {}
    fresh: dict[str, dict] = {}
    report = CheckReport(str(root), sample_rate, long_seconds, cache_file=str(cache_file))
    for path, label, split in items:
        path = Path(path)
        key = str(path)
        try:
            stat = path.stat()
        except OSError:
            facts = {"error": "file does not exist"}
        else:
            stamp = [stat.st_size, stat.st_mtime_ns]
            entry = cached.get(key)
            facts = entry["facts"] if entry and entry.get("stamp") == stamp else file_facts(path)
            fresh[key] = {"stamp": stamp, "facts": facts}
        report.checked += 1
        if found := problems_of(facts, sample_rate, long_seconds):
            why = [describe(k, facts, sample_rate, long_seconds) for k in found]
            report.files[key] = {"label": label, "split": split, "problems": found, "details": why}
    report.missing_listed = sorted(missing_listed)
    report.split_overlap = sorted(split_overlap)
    if cache and fresh != cached:
        try:
            _atomic_write(cache_file, json.dumps({"version": CACHE_VERSION, "files": fresh}))
        except OSError as error:  # a read-only home or cache: the check still works, uncached
            log.warning("cannot write the data-check cache %s (%s)", cache_file, error)
    return report
