"""FSDD: labels and splits from file names, and the recipe end to end on a tiny synthetic copy."""

import json
from pathlib import Path

import pytest
from fakes import make_fsdd

from speechcnn.data.fsdd import FSDDDataModule, parse_fsdd_name

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fsdd_root(tmp_path_factory):
    return make_fsdd(tmp_path_factory.mktemp("fsdd") / "recordings")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHCNN_CACHE_DIR", str(tmp_path / "cache"))


def test_parse_names():
    assert parse_fsdd_name("7_jackson_32.wav") == ("7", "jackson", 32)
    assert parse_fsdd_name("README.txt") is None
    assert parse_fsdd_name("12_x_1.wav") is None


def test_takes_split(fsdd_root):
    data = FSDDDataModule(str(fsdd_root), split="takes", val_takes=2)
    assert data.class_names == [str(d) for d in range(10)]
    takes = {s: set() for s in ("train", "val", "test")}
    for item in data.items:
        takes[data.split_of(item)].add(parse_fsdd_name(item.path.name)[2])
    assert takes == {"test": set(range(5)), "val": {5, 6}, "train": set(range(7, 12))}
    assert len(data.split_items("test")) == 10 * 2 * 5


def test_speaker_split(fsdd_root):
    data = FSDDDataModule(str(fsdd_root), split="speakers", test_speakers=["bob"])
    for item in data.items:
        _, speaker, take = parse_fsdd_name(item.path.name)
        expected = "test" if speaker == "bob" else "val" if take < 5 else "train"
        assert data.split_of(item) == expected
    # holding out another speaker is another store entry: concurrent folds keep their own
    other = FSDDDataModule(str(fsdd_root), split="speakers", test_speakers=["alice"])
    assert other.entry_name("train") != data.entry_name("train")
    with pytest.raises(ValueError, match="carol"):
        FSDDDataModule(str(fsdd_root), split="speakers", test_speakers=["carol"])
    with pytest.raises(ValueError, match="split"):
        FSDDDataModule(str(fsdd_root), split="random")
    with pytest.raises(ValueError, match="list.csv"):
        FSDDDataModule(str(fsdd_root), manifest="list.csv")


def test_recipe_trains_and_writes_metrics(fsdd_root, tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "recipes"))
    from speechcnn.recipe import run_recipe

    run_dir = tmp_path / "run"
    metrics = run_recipe(
        REPO / "recipes" / "free_spoken_digits.yaml",
        [
            f"--data.root={fsdd_root}",
            "--data.val_takes=2",
            "--data.batch_size=8",  # >= 20 steps: OneCycleLR needs a warm-up of 2+ steps
            f"--trainer.default_root_dir={run_dir}",
            "--trainer.max_epochs=2",
            "--trainer.enable_progress_bar=false",
            "--model.net.cnn_channels=[8]",
            "--model.net.cnn_kernels=[5]",
            "--model.net.cnn_pools=[2]",
            "--model.net.lstm_hidden=16",
        ],
    )
    written = json.loads(Path(metrics["run_dir"], "metrics.json").read_text())
    assert written["test_examples"] == 100
    assert written["epochs"] == 2
    assert 0.0 <= written["test_accuracy"] <= 1.0
    assert Path(written["best_checkpoint"]).is_file()
