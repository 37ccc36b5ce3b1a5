"""Resuming a run exactly, and saying so when a run stops early or cannot be resumed.

Lightning restores weights, optimizer and loops but not the random generators: `ExactResume`
stores them in each checkpoint, so resumed epochs draw what an uninterrupted run draws.
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


class ExactResume(pl.Callback):
    """Saves and restores the random states with each checkpoint; reports interruptions."""

    def __init__(self) -> None:
        self.interrupted: str | None = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        # numpy's state holds an ndarray, which a weights_only load refuses: store a tensor.
        kind, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = [kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached]
        checkpoint[RNG_KEY] = states
        checkpoint[RUN_KEY] = {"max_epochs": trainer.max_epochs}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Called only when fit resumes, after the model was built (which drew numbers of its
        # own) and before the first batch: the generators continue from the saved epoch end.
        if RNG_KEY not in checkpoint:
            return
        states = dict(checkpoint[RNG_KEY])
        kind, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = (kind, keys.numpy(), pos, has_gauss, cached)
        if not torch.cuda.is_available():
            states.pop("torch.cuda", None)
        _set_rng_states(states)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            self.interrupted = "SIGTERM"
            # Lightning's SIGTERMException exits 0: a scheduler would record a success.
            exception.code = 128 + signal.SIGTERM
        elif isinstance(exception, KeyboardInterrupt):
            self.interrupted = "Ctrl-C (SIGINT)"
        else:
            return
        if trainer.global_rank == 0:
            print(interruption_message(trainer, self.interrupted), file=sys.stderr, flush=True)


def interruption_message(trainer: pl.Trainer, cause: str) -> str:
    """What was stopped, what last.ckpt holds, and how to go on."""
    epoch, batches = trainer.current_epoch, trainer.num_training_batches
    done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
    stopped = f"training stopped by {cause} in epoch {epoch} (batch {done} of {batches})"
    dirs = [
        c.dirpath for c in trainer.checkpoint_callbacks
        if getattr(c, "dirpath", None) and getattr(c, "filename", None) == "last"
    ]  # fmt: skip
    last = Path(dirs[0]) / "last.ckpt" if dirs else None
    if last is None or not last.is_file():
        return (
            f"speechcnn: {stopped}, before the first epoch ended; nothing to resume: run the "
            "same command again to start over"
        )
    try:
        holds = f"{last} holds epoch {int(load_checkpoint(last)['epoch'])}"
    except (CheckpointFileError, KeyError, TypeError, ValueError):
        holds = f"{last} is there"
    return (
        f"speechcnn: {stopped}; {holds}: run the same command again to resume from it "
        f"(epoch {epoch} restarts from its beginning)"
    )


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: list(value) if isinstance(value, tuple) else value}
    named = ((f"{prefix}.{key}" if prefix else str(key), item) for key, item in value.items())
    return {k: v for name, item in named for k, v in _flat(item, name).items()}


def check_resumable(path: str | Path, module: pl.LightningModule, max_epochs: int | None) -> None:
    """Refuse to resume `path` (a run folder's last.ckpt) into a run it is not part of: raise
    `UnresumableRunError` if it is unreadable, holds other model settings or another architecture,
    or was trained toward another `max_epochs`, naming the folder, the difference, what to do."""
    run_dir = Path(path).parent.parent
    cannot = f"cannot resume {run_dir}:"
    what_to_do = (
        f"train this command in a new --trainer.default_root_dir, or move {run_dir} away to "
        "start over (nothing was deleted)"
    )
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointFileError as error:
        raise UnresumableRunError(f"{cannot} {error}; {what_to_do}") from error
    saved = _flat(checkpoint.get("hyper_parameters", {}), "")
    current = _flat(dict(module.hparams), "")
    changed = [
        f"model.{key}: {saved.get(key)!r} in the folder, {current.get(key)!r} now"
        for key in sorted(set(saved) | set(current))
        if not key.startswith("_") and saved.get(key) != current.get(key)
    ]
    if changed:
        more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
        raise UnresumableRunError(
            f"{cannot} its checkpoint has other model settings ({'; '.join(changed[:3])}{more}); "
            f"rerun with the folder's settings to resume it, or {what_to_do}"
        )
    state, mine = checkpoint.get("state_dict", {}), module.state_dict()
    mismatched = sorted(
        k for k in set(state) | set(mine)
        if k not in state or k not in mine or tuple(state[k].shape) != tuple(mine[k].shape)
    )  # fmt: skip
    if mismatched:
        raise UnresumableRunError(
            f"{cannot} its checkpoint holds another architecture ({len(mismatched)} weights "
            f"differ, e.g. {mismatched[0]}); {what_to_do}"
        )
    planned = checkpoint.get(RUN_KEY, {}).get("max_epochs")
    if planned is not None and max_epochs is not None and planned != max_epochs:
        finished = int(checkpoint.get("epoch", -1)) + 1
        raise UnresumableRunError(
            f"{cannot} it was trained toward {planned} epochs ({finished} done) and this command "
            f"asks for {max_epochs}, but the learning-rate schedule is fixed when a run starts; "
            f"resume it with --trainer.max_epochs {planned}, or {what_to_do}"
        )
