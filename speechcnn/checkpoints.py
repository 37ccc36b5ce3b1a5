"""The one way speechcnn reads a checkpoint: tensors and plain values only, never code.

A `.ckpt` is a pickle, which can call any function while it is read: `load_checkpoint` reads
with `torch.load(weights_only=True)`, and so does the Trainer, through `SafeCheckpointIO`.
"""

from __future__ import annotations

import inspect
import io
import os
import pickle
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

if TYPE_CHECKING:
    from speechcnn.training import SpeechClassifierModule

URL_SCHEMES = ("http://", "https://")


class CheckpointFileError(ValueError):
    """A checkpoint that is missing, unreadable, or holds more than tensors and plain values."""


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _why_unreadable(error: BaseException) -> str:
    """A short reason for a failed safe load, without torch's advice to load unsafely."""
    text = str(error)
    unsupported = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", text)
    if unsupported:
        return f"it asks to run {unsupported[1]} while loading, which speechcnn never does"
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in text.lower():
        return "it holds objects other than tensors and plain values, which speechcnn never loads"
    # A cut-short zip archive fails in the reader, at any of several places.
    if isinstance(error, EOFError | zipfile.BadZipFile | OSError) or "PytorchStreamReader" in text:
        return "truncated or corrupt: an interrupted copy or save?"
    return _first_line(error)


def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", timeout: float = 60.0
) -> dict[str, Any]:
    """The checkpoint dict at `path` (a file or an http(s) address), read with weights_only=True;
    `CheckpointFileError` (one line) if it is missing, empty, truncated, not a checkpoint, or
    holds objects other than tensors and plain values."""
    if str(path).lower().startswith(URL_SCHEMES):
        request = urllib.request.Request(str(path), headers={"User-Agent": "speechcnn"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                source: Any = io.BytesIO(response.read())
        except (urllib.error.URLError, OSError) as error:
            raise CheckpointFileError(f"cannot download checkpoint {path}: {error}") from error
        size = source.getbuffer().nbytes
    else:
        source = Path(path)
        if not source.is_file():
            what = "is a folder, not a file" if source.is_dir() else "does not exist"
            raise CheckpointFileError(f"checkpoint {path} {what}")
        size = source.stat().st_size
    if size == 0:
        raise CheckpointFileError(f"checkpoint {path} is empty (0 bytes): a cut-short save or copy")
    try:
        checkpoint = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 (torch.load raises many kinds)
        why = _why_unreadable(error)
        raise CheckpointFileError(f"{path}: not a speechcnn checkpoint ({why})") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointFileError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dict"
        )
    return checkpoint


def load_module(path: str | Path) -> SpeechClassifierModule:
    """The `SpeechClassifierModule` of a training checkpoint, on the CPU; `CheckpointFileError`
    for `load_checkpoint`'s reasons, or if the file holds no speechcnn model."""
    from speechcnn.training import SpeechClassifierModule

    checkpoint = load_checkpoint(path)
    not_ours = f"{path} is not a speechcnn training checkpoint (from `speechcnn fit` or a recipe)"
    if "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointFileError(f"{not_ours}: it has no state_dict and hyper_parameters")
    # Lightning adds keys of its own (`_instantiator`); the constructor takes its arguments.
    accepted = inspect.signature(SpeechClassifierModule).parameters
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if k in accepted}
    try:
        module = SpeechClassifierModule(**hparams)
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"])
        module.calibration = checkpoint.get("calibration")  # spotting settings, if calibrated
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        raise CheckpointFileError(f"{not_ours}: {_first_line(error)}") from error
    return module


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with `load_checkpoint`'s safe reading and atomic writes."""

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # weights_only is ignored on purpose: no caller may ask for an unsafe load.
        return load_checkpoint(path, map_location=map_location)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "://" in str(path):  # a URL or a remote filesystem: Lightning's own writer
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            torch.save(checkpoint, partial)
            os.replace(partial, path)  # a reader sees the old file or the new one, never half
        finally:
            partial.unlink(missing_ok=True)
