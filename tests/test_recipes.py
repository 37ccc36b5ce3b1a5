"""The Speech Commands recipe and the CLI, end to end on a tiny synthetic data set."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from speechcnn.checkpoints import load_checkpoint
from speechcnn.cli import SpeechCNNCLI, main
from speechcnn.model import ClassifierConfig, build_classifier

REPO = Path(__file__).resolve().parents[1]
TINY_NET = [
    "--model.net.n_mels=16", "--model.net.cnn_channels=[4, 8]", "--model.net.cnn_kernels=[3, 3]",
    "--model.net.cnn_pools=[2, 2]",
    "--model.net.lstm_hidden=16", "--model.net.lstm_layers=1",
]  # fmt: skip


def test_cli_parses_recipe_yaml(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "recipes/speech_commands.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "SpeechCommandsDataModule" in printed and "lstm_hidden: 176" in printed
    assert "freq_warp: 0.1" in printed and "gain_db: 12.0" in printed
    assert "class_names" not in printed.split("model:")[1].split("data:")[0]  # linked, not set


def test_streaming_preset_parses_on_the_recipe(capsys):
    preset = REPO / "recipes/presets/streaming.yaml"
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(REPO / "recipes/speech_commands.yaml"),
                "--config",
                str(preset),
                "--print_config",
            ]
        )
    printed = capsys.readouterr().out
    assert "pooling: last" in printed and "lstm_hidden: 176" in printed


@pytest.fixture(scope="module")
def recipe_run(speech_commands_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cmd = [
        sys.executable, str(REPO / "recipes/speech_commands.py"),
        "--data.root", str(speech_commands_root),
        "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run_dir),
        "--trainer.enable_progress_bar", "false", "--data.batch_size", "16", *TINY_NET,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, cmd, out.stdout


def test_recipe_prints_and_writes_metrics(recipe_run):
    run_dir, _, stdout = recipe_run
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_examples"] == 36
    assert metrics["parameters"] > 0 and metrics["epochs"] == 2 and metrics["train_seconds"] > 0
    folder = Path(metrics["run_dir"])
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    report = json.loads((folder / "report.json").read_text())
    assert set(report["per_class"]) >= {"yes", "_unknown_", "_silence_"}
    assert (folder / "confusion.png").stat().st_size > 1000
    # with tensorboard installed (the tensorboard and dev extras), Lightning logs for it
    assert list(folder.glob("events.out.tfevents.*"))
    assert Path(metrics["best_checkpoint"]).is_file()
    # what was tested: the weights after the last epoch
    assert metrics["test_checkpoint"] == "last"
    assert metrics["tested_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    last = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 1  # the second and last epoch, whether or not it was the best


def test_last_checkpoint_is_the_latest_epoch_even_when_validation_got_worse(
    speech_commands_root, tmp_path
):
    # ModelCheckpoint's own save_last would leave last.ckpt at the best epoch (here the first),
    # and a resumed run would lose the epochs after it.
    args = [
        "--config", str(REPO / "recipes/speech_commands.yaml"),
        "--data.root", str(speech_commands_root), "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    cli = SpeechCNNCLI(args=args, run=False)
    checkpoints = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert len(checkpoints) == 2
    trainer = pl.Trainer(
        max_epochs=3, callbacks=checkpoints, logger=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(WorseEveryEpoch())
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best-000.ckpt", "last.ckpt"]
    last = load_checkpoint(folder / "last.ckpt")
    assert last["epoch"] == 2


class WorseEveryEpoch(pl.LightningModule):
    """One weight, a few steps an epoch, and a validation accuracy that falls every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: list, batch_idx: int) -> torch.Tensor:
        return (self.weight - batch[0]).pow(2).mean()

    def validation_step(self, batch: list, batch_idx: int) -> None:
        self.log("val/acc", 1.0 - 0.1 * self.current_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.ones(4)), batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.ones(2)), batch_size=2)


def test_rerunning_a_finished_run_resumes_it_and_trains_nothing_more(recipe_run):
    # A run stopped mid-way resumes exactly (test_resume.py); a finished one resumes at its end.
    run_dir, cmd, stdout = recipe_run
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in out.stdout
    again = json.loads(out.stdout.strip().splitlines()[-1])
    first = json.loads(stdout.strip().splitlines()[-1])
    assert again["epochs"] == 2 and again["test_accuracy"] == first["test_accuracy"]


def test_cli_tests_saved_run_on_official_layout(recipe_run, official_test_root, capsys):
    run_dir, _, stdout = recipe_run
    metrics = json.loads(stdout.strip().splitlines()[-1])
    config = Path(metrics["run_dir"]) / "config.yaml"
    main([
        "test", "--config", str(config), "--ckpt_path", metrics["best_checkpoint"],
        "--data.test_root", str(official_test_root), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "test/acc" in printed
    # what the recipe writes, for the official layout's clips
    tested = json.loads(printed.strip().splitlines()[-1])
    assert tested["tested_checkpoint"] == metrics["best_checkpoint"]
    folder = Path(tested["run_dir"])
    assert json.loads((folder / "metrics.json").read_text()) == tested
    report = json.loads((folder / "report.json").read_text())
    assert sum(c["support"] for c in report["per_class"].values()) == tested["test_examples"]
    assert set(report["per_class"]) >= {"yes", "_unknown_", "_silence_"}
    assert (folder / "confusion.png").stat().st_size > 1000


def _config(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _parameters(config: dict) -> int:
    net = config["model"]["net"]
    model = build_classifier(ClassifierConfig(**net), num_classes=12)
    return sum(p.numel() for p in model.parameters())


def test_recipe_defaults_are_the_model_defaults():
    """ClassifierConfig's defaults are the recipe's network: one source of the default model."""
    net = _config(REPO / "recipes/speech_commands.yaml")["model"]["net"]
    defaults = dataclasses.asdict(ClassifierConfig())
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()} == net
    assert _parameters({"model": {"net": net}}) == 375_981


def test_presets_are_self_contained_and_streamable():
    recipe = _config(REPO / "recipes/speech_commands.yaml")
    for name in ("small", "streaming", "full_data"):
        preset = _config(REPO / f"recipes/presets/{name}.yaml")
        # every setting spelled out: the file reads on its own
        assert preset.keys() == recipe.keys(), name
        assert preset["model"]["net"].keys() == recipe["model"]["net"].keys(), name
        assert preset["data"]["init_args"].keys() == recipe["data"]["init_args"].keys(), name
        model = build_classifier(ClassifierConfig(**preset["model"]["net"]), 12)
        assert model.head.streamable, name
    assert _parameters(_config(REPO / "recipes/presets/small.yaml")) <= 100_000
    assert 1_000_000 < _parameters(_config(REPO / "recipes/presets/full_data.yaml")) < 2_000_000
    assert _config(REPO / "recipes/presets/streaming.yaml")["model"]["net"]["pooling"] == "last"
