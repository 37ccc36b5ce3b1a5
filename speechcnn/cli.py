"""`speechcnn` command line: LightningCLI subcommands (fit, validate, test, predict)."""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
from jsonargparse import ArgumentParser
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from speechcnn.checkpoints import SafeCheckpointIO
from speechcnn.errors import run_reporting_errors
from speechcnn.report import write_test_report
from speechcnn.resume import ExactResume
from speechcnn.training import SpeechClassifierModule


def checkpoint_dir(root: str | None) -> str | None:
    """Checkpoints live in `<trainer.default_root_dir>/checkpoints`, so a rerun finds them."""
    return None if root is None else str(Path(root) / "checkpoints")


class SpeechCNNCLI(LightningCLI):
    """LightningCLI with two checkpoints, the recipe's test rule and linked arguments.

    `checkpoint` keeps the best epoch by validation accuracy; `last_checkpoint` rewrites
    `last.ckpt` after every epoch (ModelCheckpoint's `save_last` would skip epochs that did not
    improve). The data module is the one source of the class names and sample rate.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("trainer_defaults", {"callbacks": [ExactResume()]})
        super().__init__(SpeechClassifierModule, pl.LightningDataModule, *args, **kwargs)

    def instantiate_trainer(self, **kwargs: object) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer

    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.add_argument(
            "--test_checkpoint",
            type=Literal["last", "best"],
            default="last",
            help="what a recipe tests: the weights after the last epoch (a one-cycle schedule "
            "has annealed them and EMA averaged them) or the epoch with the best validation "
            "accuracy",
        )
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                # no monitor and one file: the latest epoch, overwritten in place
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.filename": "last",
                "last_checkpoint.enable_version_counter": False,
            }
        )
        for name in ("checkpoint", "last_checkpoint"):
            parser.link_arguments(
                "trainer.default_root_dir", f"{name}.dirpath", compute_fn=checkpoint_dir
            )
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.sample_rate", "model.sample_rate", apply_on="instantiate")

    def after_test(self) -> None:
        """`speechcnn test` writes what a recipe writes: metrics.json, report.json (per-class
        precision and recall) and confusion.png, in the run's log folder."""
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        extra = {"tested_checkpoint": str(self.config["test"].get("ckpt_path") or "")}
        keywords = getattr(self.datamodule, "keywords", ())
        confusion = self.model.test_confusion.compute()
        metrics = write_test_report(confusion, self.model.class_names, run_dir, keywords, extra)
        print(json.dumps(metrics), flush=True)


# Subcommands beyond Lightning's fit/validate/test/predict: name -> "module:function", where the
# function takes the remaining arguments (list[str]). Imported only when called.
EXTRA_COMMANDS: dict[str, str] = {
    "calibrate": "speechcnn.calibration:cli",
    "classify": "speechcnn.classify:cli",
    "spot": "speechcnn.spotting:cli",
    "listen": "speechcnn.listen:cli",
    "export": "speechcnn.export:cli",
    "check-data": "speechcnn.data.layouts:main",
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `speechcnn` console script (`argv`: the arguments after the name);
    user errors end as one line and exit status 2 (`speechcnn.errors`)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in EXTRA_COMMANDS:
        module, function = EXTRA_COMMANDS[argv[0]].split(":")
        command = getattr(importlib.import_module(module), function)
        run_reporting_errors(command, argv[1:], f"speechcnn {argv[0]}")
        return
    if argv[:1] in (["-h"], ["--help"]):
        print(f"other subcommands: {', '.join(sorted(EXTRA_COMMANDS))} (each takes --help)")
    run_reporting_errors(build_cli, argv, "speechcnn")


def build_cli(args: list[str], run: bool = True) -> SpeechCNNCLI:
    """`SpeechCNNCLI(args=args)`, without Lightning's warning that args is passed on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return SpeechCNNCLI(args=args, run=run)


if __name__ == "__main__":
    main()
