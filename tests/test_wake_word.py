"""The wake-word recipe on synthetic recordings: windows around the phrase, the threshold for
a false-alarm budget stored in the checkpoint, the DET curve, and `spot` using it."""

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import make_wake_words

from speechcnn import calibration
from speechcnn.checkpoints import load_checkpoint
from speechcnn.data.wake_word import WakeWordDataModule, loudest_window, split_of_path

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--model.net.n_mels=16", "--model.net.cnn_channels=[8, 16]", "--model.net.cnn_kernels=[3, 3]",
    "--model.net.cnn_pools=[2, 2]", "--model.net.lstm_hidden=32", "--model.lr=0.01",
]  # fmt: skip


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    return make_wake_words(tmp_path_factory.mktemp("wake"))


def test_loudest_window_holds_the_phrase():
    clip = np.zeros(32000, dtype=np.float32)
    clip[20000:21000] = 1.0
    window = loudest_window(clip, 8000)
    assert len(window) == 8000 and window.sum() == 1000
    assert len(loudest_window(np.ones(100, np.float32), 300)) == 300


def test_splits_are_disjoint_and_seeded(recordings, tmp_path):
    data = WakeWordDataModule(
        str(recordings / "wake"), [str(recordings / "other")], noise_dir=str(recordings / "noise"),
        cache_dir=str(tmp_path),
    )  # fmt: skip
    splits = {s: set(data.positive_files(s)) for s in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == 61  # every recording, the broken one too
    assert not (splits["train"] & splits["val"]) and not (splits["val"] & splits["test"])
    assert len(splits["test"]) == 6 and data.class_names == ["_unknown_", "wake"]
    negatives = {s: data.negative_files(s) for s in ("train", "val", "test")}
    assert sum(map(len, negatives.values())) == 80
    assert all(split_of_path(p, 0) == "val" for p in negatives["val"])
    with pytest.raises(ValueError, match="keyword_dir .*nowhere"):
        WakeWordDataModule(str(tmp_path / "nowhere"), [str(recordings / "other")])
    with pytest.raises(ValueError, match="negative_roots"):
        WakeWordDataModule(str(recordings / "wake"), [str(tmp_path / "missing")])


def test_a_negative_root_above_the_phrase_leaves_the_phrase_out(recordings, monkeypatch):
    # The default roots are relative and hold the phrase's own folder (../shared/data/
    # wake_words/computer under ../shared/data/wake_words): none of its recordings may become
    # a negative, however the two paths are written.
    monkeypatch.chdir(recordings / "other")
    data = WakeWordDataModule("../wake", [".."], noise_dir="../noise", check=False)
    negatives = [f for s in ("train", "val", "test") for f in data.negative_files(s)]
    assert negatives and not [f for f in negatives if f.resolve().parent.name == "wake"]
    assert len([f for f in negatives if f.resolve().parent.name == "other"]) == 80


def test_eval_negative_roots_replace_the_test_negatives_only(recordings, tmp_path):
    data = WakeWordDataModule(
        str(recordings / "wake"), [str(recordings / "other")], noise_dir=str(recordings / "noise"),
        eval_negative_roots=[str(recordings / "noise")], check=False,
    )  # fmt: skip
    positives, negatives = data.calibration_set("test")
    assert [len(r) for r in negatives] == [len(r) for r in data.noise()]  # all of it, every split
    assert 0 < len(positives["wake"]) <= 6 and data.eval_negatives == "eval_negative_roots"
    _, validation = data.calibration_set("val")
    assert len(validation) == len(data.negative_files("val")) > 0


def test_recipe_calibrates_stores_the_threshold_and_spot_uses_it(
    recordings, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(calibration, "MIN_NEGATIVE_HOURS", 0.02)
    run = tmp_path / "run"
    summary = calibration.run_wake_word(
        REPO / "recipes/wake_word.yaml",
        [*TINY, "--data.keyword_dir", str(recordings / "wake"),
         "--data.negative_roots", json.dumps([str(recordings / "other")]),
         "--data.noise_dir", str(recordings / "noise"), "--data.cache_dir", str(tmp_path / "c"),
         "--data.batch_size", "16", "--trainer.max_epochs", "15",
         "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
         "--budget_fa_per_hour", "50"],
    )  # fmt: skip
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == summary and summary["test_positives"] == 6
    assert set(summary["recall_at_fa_per_hour"]) == {"0.5", "1.0", "2.0", "5.0"}
    assert summary["negative_hours"] >= 0.02  # the negative stream repeated to its minimum
    assert summary["test_recall_at_threshold"] >= 0.8 and summary["recall_at_1_fa_per_hour"] >= 0.8
    assert (run / "det.png").stat().st_size > 1000
    curve = json.loads((run / "det.json").read_text())["validation"]["wake"]
    # the stored threshold: in the middle of those that find the most validation recordings
    # within the budget
    stored = load_checkpoint(run / "checkpoints/last.ckpt")["calibration"]
    assert stored["threshold"] == summary["threshold"] == calibration.threshold_for(curve, 50)
    assert stored["keyword_thresholds"] == {"wake": stored["threshold"]}
    rows = zip(curve["thresholds"], curve["fa_per_hour"], curve["recall"], strict=True)
    within = [(t, recall) for t, fa, recall in rows if fa <= 50]
    tied = [t for t, recall in within if recall == max(r for _, r in within)]
    assert min(tied) <= stored["threshold"] <= max(tied)
