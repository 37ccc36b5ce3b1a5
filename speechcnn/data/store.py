"""Waveform store (docs/training.md): every clip decoded once into a memory-mapped int16 cache.

An entry is a folder `<name>-<fingerprint[:16]>/`: `waveforms.i16`, the (N, S) int16 clips, and
`index.json` (shape, paths, labels, valid lengths, the files left out, fingerprint, ...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from speechcnn.data.audio import fit_length
from speechcnn.data.clips import ClipSet, Extra, Items, decode_clips, iter_decoded, to_int16

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_TMP_PREFIX = ".tmp-"


def cache_home() -> Path:
    """The home of every speechcnn cache (waveform stores of read-only folders, data checks)."""
    if env := os.environ.get("SPEECHCNN_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "speechcnn"


def default_cache_dir(root: str | Path) -> Path:
    """Where the cache of a data folder lives: in it if writable, else under `cache_home()`."""
    root = Path(root).resolve()
    if os.access(root, os.W_OK):
        return root / ".speechcnn_cache"
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return cache_home() / f"{root.name}-{tag}"


def fingerprint(items: Items, sample_rate: int, num_samples: int | None, extra: Extra = ()) -> str:
    """Hash of what the clips depend on: files by path, label, size and mtime (hashing their
    bytes would cost as much as decoding them), extra clips, rate, length, format version."""
    h = hashlib.sha256()
    h.update(f"v{FORMAT_VERSION} sr={sample_rate} n={num_samples}\n".encode())
    for path, label in items:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size} {st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{path}\t{label}\t{stamp}\n".encode())
    for samples, label, name in extra:
        h.update(f"extra {name}\t{label}\t{samples.shape}\n".encode())
        h.update(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
    return h.hexdigest()


def _read_entry(folder: Path, expected: str) -> ClipSet | None:
    """The ClipSet of a finished cache entry, or None if it is absent or does not match."""
    index_path = folder / "index.json"
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable cache index %s (%s)", index_path, error)
        return None
    if index.get("fingerprint") != expected or index.get("version") != FORMAT_VERSION:
        return None
    shape = rows, width = tuple(index["shape"])
    data = folder / "waveforms.i16"
    if data.stat().st_size != rows * width * 2:
        log.warning("ignoring cache %s: waveforms.i16 has the wrong size", folder)
        return None
    # mode="c" (copy on write): the tensor is writable as torch expects, the file never is.
    array = (
        np.memmap(data, np.int16, "c", shape=shape) if rows * width else np.zeros(shape, np.int16)
    )
    return ClipSet(
        waveforms=torch.from_numpy(array),
        lengths=torch.tensor(index["lengths"], dtype=torch.long),
        labels=torch.tensor(index["labels"], dtype=torch.long),
        paths=list(index["paths"]),
        skipped=list(index["skipped"]),
    )


def _write_entry(
    folder: Path, items: Items, sample_rate: int, num_samples: int | None, extra: Extra, key: str
) -> None:
    """Decode into `folder` (a fresh temporary folder). Clips of a fixed length are streamed to
    disk one at a time, so caching a split never holds it in memory as float."""
    data = folder / "waveforms.i16"
    if num_samples is None:  # padded to the longest clip, known only after decoding them all
        clips = decode_clips(items, sample_rate, None, extra=extra)
        clips.waveforms.numpy().tofile(data)
        width, paths, skipped = clips.waveforms.shape[1], clips.paths, clips.skipped
        labels, lengths = clips.labels.tolist(), clips.lengths.tolist()
    else:
        width, labels, lengths, paths, skipped = num_samples, [], [], [], []
        last_report = time.monotonic()
        with open(data, "wb") as out:
            for samples, label, path in chain(iter_decoded(items, sample_rate, skipped), extra):
                out.write(to_int16(fit_length(samples, width)).tobytes())
                lengths.append(min(len(samples), width))
                labels.append(label)
                paths.append(path)
                if time.monotonic() - last_report > 10:
                    log.info("caching: %d / %d clips decoded", len(labels), len(items) + len(extra))
                    last_report = time.monotonic()
            out.flush()
            os.fsync(out.fileno())
    index = {
        "version": FORMAT_VERSION, "fingerprint": key, "shape": [len(labels), width],
        "sample_rate": sample_rate, "num_samples": num_samples, "labels": labels,
        "lengths": lengths, "paths": paths, "skipped": skipped,
    }  # fmt: skip
    (folder / "index.json").write_text(json.dumps(index))


def _remove_stale(cache_dir: Path, name: str, keep: Path) -> None:
    """Delete older entries of `name` and temporary folders that killed runs left behind."""
    for other in filter(Path.is_dir, cache_dir.glob(f"{name}-*")):
        # Only `<name>-<16 hex>`: a longer name that starts with this one is another entry.
        if re.fullmatch("[0-9a-f]{16}", other.name[len(name) + 1 :]) and other != keep:
            log.info("removing stale cache %s", other)
            shutil.rmtree(other, ignore_errors=True)
    for tmp in cache_dir.glob(f"{_TMP_PREFIX}{name}-*"):
        pid = tmp.name.rsplit("-", 2)[-2] if tmp.name.count("-") >= 2 else ""
        if not (pid.isdigit() and _alive(int(pid))):  # else another process is building it
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return pid != os.getpid()


def cached_clips(
    items: Items,
    sample_rate: int,
    num_samples: int | None,
    cache_dir: str | Path,
    name: str,
    extra: Extra = (),
) -> ClipSet:
    """`decode_clips` through the store entry `name` in `cache_dir`: decoded once, memory-mapped
    afterwards; the files left out are logged again on every run that reuses the entry."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"cache entry name must be a plain file name, got {name!r}")
    cache_dir = Path(cache_dir)
    key = fingerprint(items, sample_rate, num_samples, extra)
    folder = cache_dir / f"{name}-{key[:16]}"
    if (clips := _read_entry(folder, key)) is not None:
        log.info("%s: %d clips memory-mapped from cache %s", name, len(clips), folder)
        for reason in clips.skipped:
            log.warning("skipped when cached: %s", reason)
        return clips
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s: decoding %d files once into cache %s", name, len(items), folder)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-{os.getpid()}-", dir=cache_dir))
    try:
        _write_entry(tmp, items, sample_rate, num_samples, extra, key)
        try:
            os.rename(tmp, folder)  # atomic: readers see no entry or a complete one
        except OSError:
            if _read_entry(folder, key) is None:  # not a concurrent builder's finished entry
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing is left once renamed into place
    _remove_stale(cache_dir, name, keep=folder)
    if (clips := _read_entry(folder, key)) is None:
        raise RuntimeError(f"cache entry {folder} was written but cannot be read back")
    seconds, skipped = time.perf_counter() - start, len(clips.skipped)
    log.info("%s: cached %d clips (%d skipped) in %.1f s", name, len(clips), skipped, seconds)
    return clips
