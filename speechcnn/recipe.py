"""What a recipe runs: fit (resuming an interrupted run), test the trained model, report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl
import yaml

from speechcnn.cli import build_cli
from speechcnn.errors import run_reporting_errors
from speechcnn.report import write_test_report
from speechcnn.resume import check_resumable


class EpochTimer(pl.Callback):
    """Wall-clock seconds of each training epoch run in this process."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def stacked_config(paths: list[Path]) -> dict:
    """YAML configs merged in order, as LightningCLI merges repeated --config files: later keys
    win, nested sections merge key by key."""

    def merge(into: dict, layer: dict) -> dict:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value
        return into

    merged: dict = {}
    for path in paths:
        merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    return merged


def run_recipe(config: str | Path, argv: list[str]) -> dict:
    """Train with `config` plus `--section.key value` overrides (resuming the run folder's
    last.ckpt), test the `test_checkpoint` (`last` epoch or `best` validation accuracy), write
    `write_test_report`'s files to the run's log folder and return the metrics."""
    cli = build_cli(["--config", str(config), *argv], run=False)
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    checkpoint, latest = cli.config_init["checkpoint"], cli.config_init["last_checkpoint"]
    last = Path(latest.dirpath) / "last.ckpt" if latest.dirpath else None
    resume = str(last) if last and last.is_file() else None
    if resume:
        check_resumable(resume, module, trainer.max_epochs)
        print(f"resuming from {resume}", flush=True)
    timer = EpochTimer()
    trainer.callbacks.append(timer)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    train_seconds = time.perf_counter() - start
    best = checkpoint.best_model_path if checkpoint else ""
    # After fit, last.ckpt holds the final epoch (None tests the same weights from memory).
    final = str(last) if last and last.is_file() else None
    tested = final if cli.config.test_checkpoint == "last" else (best or None)
    trainer.test(module, datamodule=data, ckpt_path=tested)

    per_epoch = round(sum(timer.seconds) / len(timer.seconds), 2) if timer.seconds else None
    extra = {
        "parameters": module.num_parameters,
        "train_seconds": round(train_seconds, 1),
        "epochs": trainer.current_epoch,
        "seconds_per_epoch": per_epoch,
        "test_checkpoint": cli.config.test_checkpoint,
        "tested_checkpoint": tested or "",
        "best_checkpoint": best,
    }
    run_dir = Path(trainer.log_dir or trainer.default_root_dir)
    confusion, keywords = module.test_confusion.compute(), getattr(data, "keywords", ())
    metrics = write_test_report(confusion, module.class_names, run_dir, keywords, extra)
    print(json.dumps(metrics), flush=True)
    return metrics


def recipe_main(config: str | Path, argv: list[str]) -> None:
    """`run_recipe` for a recipe script: a user error is one line and exit status 2 (see
    `speechcnn.errors`), a run stopped by SIGTERM or Ctrl-C exits non-zero (`ExactResume`)."""
    run_reporting_errors(lambda args: run_recipe(config, args), argv, Path(config).stem)
