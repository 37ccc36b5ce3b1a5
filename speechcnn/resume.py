"""Resuming a run exactly, and saying so when a run stops early or cannot be resumed.

`ExactResume` stores the random states of torch (CPU and CUDA), numpy and Python in every
checkpoint and restores them when training resumes from one, so the epochs after the resume
draw the same shuffles, augmentations and dropout masks as an uninterrupted run (Lightning
restores weights, optimizer, schedule and loop counters, not the generators). A fresh run draws
exactly what it drew without this callback: the states are only read and written.

last.ckpt is written at the end of every epoch (atomically, `SafeCheckpointIO`); a run stopped
by SIGTERM or Ctrl-C keeps it and exits non-zero, saying how to resume: the same command again
reruns the epoch that was cut short from its start, from the states at its start, so the
resumed run ends where the uninterrupted one would.

`check_resumable` looks at a run folder's last.ckpt before resuming it and refuses, with one
message saying why and what to do, a checkpoint that is unreadable, that holds another model or
other settings, or that was trained toward another number of epochs (its learning-rate
schedule is fixed at the start). Nothing is deleted.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from pytorch_lightning.utilities.exceptions import SIGTERMException

from speechcnn.checkpoints import CheckpointFileError, load_checkpoint

RNG_KEY = "speechcnn_rng_states"
RUN_KEY = "speechcnn_run"


class UnresumableRunError(ValueError):
    """A run folder whose checkpoint this command cannot continue; the message says why."""


def _to_plain(states: dict[str, Any]) -> dict[str, Any]:
    # numpy's state holds an ndarray, which a weights_only load refuses: store it as a tensor.
    states = dict(states)
    if "numpy" in states:
        kind, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = [kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached]
    return states


def _from_plain(states: dict[str, Any]) -> dict[str, Any]:
    states = dict(states)
    if "numpy" in states:
        kind, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = (kind, keys.numpy(), pos, has_gauss, cached)
    if "torch.cuda" in states and not torch.cuda.is_available():
        del states["torch.cuda"]
    return states


class ExactResume(pl.Callback):
    """Saves and restores the random states with each checkpoint; reports interruptions."""

    def __init__(self) -> None:
        self.interrupted: str | None = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        checkpoint[RNG_KEY] = _to_plain(states)
        checkpoint[RUN_KEY] = {"max_epochs": trainer.max_epochs}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Called only when fit resumes, after the model was built (which drew numbers of its
        # own) and before the first batch: the generators continue from the saved epoch end.
        if RNG_KEY in checkpoint:
            _set_rng_states(_from_plain(checkpoint[RNG_KEY]))

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            self.interrupted = "SIGTERM"
            # Lightning's SIGTERMException is a SystemExit with status 0: a scheduler would
            # record the stopped run as a success.
            exception.code = 128 + signal.SIGTERM
        elif isinstance(exception, KeyboardInterrupt):
            self.interrupted = "Ctrl-C (SIGINT)"
        else:
            return
        if trainer.global_rank == 0:
            print(interruption_message(trainer, self.interrupted), file=sys.stderr, flush=True)


def _last_checkpoint(trainer: pl.Trainer) -> Path | None:
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath and getattr(callback, "filename", None) == "last":
            return Path(dirpath) / "last.ckpt"
    return None


def interruption_message(trainer: pl.Trainer, cause: str) -> str:
    """What was stopped, what last.ckpt holds, and how to go on."""
    epoch = trainer.current_epoch
    batches = trainer.num_training_batches
    done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
    where = f"epoch {epoch} (batch {done} of {batches})"
    last = _last_checkpoint(trainer)
    if last is not None and last.is_file():
        try:
            saved_epoch = int(load_checkpoint(last)["epoch"])
            holds = f"{last} holds epoch {saved_epoch}"
        except (CheckpointFileError, KeyError, TypeError, ValueError):
            holds = f"{last} is there"
        return (
            f"speechcnn: training stopped by {cause} in {where}; {holds}: run the same command "
            f"again to resume from it (epoch {epoch} restarts from its beginning)"
        )
    return (
        f"speechcnn: training stopped by {cause} in {where}, before the first epoch ended; "
        "nothing to resume: run the same command again to start over"
    )


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: list(value) if isinstance(value, tuple) else value}


def check_resumable(path: str | Path, module: pl.LightningModule, max_epochs: int | None) -> None:
    """Refuse to resume `path` (a run folder's last.ckpt) into a run it is not part of.

    Raises:
        UnresumableRunError: the checkpoint is unreadable, holds other model settings or another
            architecture, or was trained toward another `max_epochs`; the message names the
            folder, the difference, and what to do.
    """
    path = Path(path)
    run_dir = path.parent.parent
    what_to_do = (
        f"train this command in a new --trainer.default_root_dir, or move {run_dir} away to "
        "start over (nothing was deleted)"
    )
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointFileError as error:
        raise UnresumableRunError(f"cannot resume {run_dir}: {error}; {what_to_do}") from error
    saved = _flat(checkpoint.get("hyper_parameters", {}), "")
    current = _flat(dict(module.hparams), "")
    changed = [
        f"model.{key}: {saved.get(key)!r} in the folder, {current.get(key)!r} now"
        for key in sorted(set(saved) | set(current))
        if not key.startswith("_") and saved.get(key) != current.get(key)
    ]
    if changed:
        shown = "; ".join(changed[:3]) + (
            f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
        )
        raise UnresumableRunError(
            f"cannot resume {run_dir}: its checkpoint has other model settings ({shown}); "
            f"rerun with the folder's settings to resume it, or {what_to_do}"
        )
    state = checkpoint.get("state_dict", {})
    mine = module.state_dict()
    mismatched = sorted(
        k for k in set(state) | set(mine)
        if k not in state or k not in mine or tuple(state[k].shape) != tuple(mine[k].shape)
    )  # fmt: skip
    if mismatched:
        raise UnresumableRunError(
            f"cannot resume {run_dir}: its checkpoint holds another architecture "
            f"({len(mismatched)} weights differ, e.g. {mismatched[0]}); {what_to_do}"
        )
    planned = checkpoint.get(RUN_KEY, {}).get("max_epochs")
    if planned is not None and max_epochs is not None and planned != max_epochs:
        finished = int(checkpoint.get("epoch", -1)) + 1
        raise UnresumableRunError(
            f"cannot resume {run_dir}: it was trained toward {planned} epochs ({finished} done) "
            f"and this command asks for {max_epochs}, but the learning-rate schedule is fixed "
            f"when a run starts; resume it with --trainer.max_epochs {planned}, or {what_to_do}"
        )
