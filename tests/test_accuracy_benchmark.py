"""benchmarks/accuracy.py end to end on the tiny synthetic data set: seeds, reuse, table, plot."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from fakes import make_fsdd, write_wav

from speechcnn.model import ClassifierConfig, build_classifier

REPO = Path(__file__).resolve().parents[1]
TINY = """\
trainer:
  max_epochs: 2
model:
  net: {n_mels: 16, cnn_channels: [4, 8], cnn_kernels: [3, 3], cnn_pools: [2, 2], lstm_hidden: 16,
    lstm_layers: 1}
data:
  init_args: {batch_size: 16}
"""


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("accuracy", REPO / "benchmarks/accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unknown_configuration_is_refused_before_training(accuracy, tmp_path, capsys):
    with pytest.raises(SystemExit):
        accuracy.main(["no/such.yaml", "--data-root", str(tmp_path)])
    assert "configuration no/such.yaml: no such YAML file" in capsys.readouterr().err


def test_trains_seeds_reuses_runs_and_reproduces(accuracy, speech_commands_root, tmp_path, capsys):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY)
    common = ["--data-root", str(speech_commands_root), "--jobs", "2", "--threads", "1"]
    rows = accuracy.main(
        [str(tiny), *common, "--seeds", "0", "1", "--out-dir", str(tmp_path / "a"),
         "--table", str(tmp_path / "table.md"), "--plot", str(tmp_path / "plot.png")]
    )  # fmt: skip
    (row,) = rows
    assert row["name"] == "tiny" and row["seeds"] == [0, 1] and row["epochs"] == 2
    assert row["parameters"] > 0 and row["macs_per_second"] > 0
    assert 0.0 <= row["accuracy_mean"] <= 1.0 and row["accuracy_std"] >= 0.0
    assert row["val_accuracy_mean"] is not None
    printed = capsys.readouterr().out
    assert json.loads(printed.splitlines()[0]) == row
    assert "| tiny |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "plot.png").stat().st_size > 1000

    # A finished run is reused, not retrained: its result file is read back as it is.
    result = next((tmp_path / "a").glob("tiny/seed0-*/result.json"))
    stamp = result.stat().st_mtime_ns
    again = accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(tmp_path / "a")])
    assert result.stat().st_mtime_ns == stamp
    assert again[0]["accuracies"] == row["accuracies"][:1]

    # Other settings under the same name train into a new folder; the old run stays.
    tiny.write_text(TINY.replace("lstm_hidden: 16", "lstm_hidden: 12"))
    accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(tmp_path / "a")])
    assert len(list((tmp_path / "a").glob("tiny/seed0-*/result.json"))) == 2 and result.is_file()

    # The same seed trained afresh gives the same accuracy.
    tiny.write_text(TINY)
    fresh = accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(tmp_path / "b")])
    assert fresh[0]["accuracies"] == row["accuracies"][:1]


def test_speaker_folds_are_disjoint_and_cover_every_clip(accuracy, speech_commands_root, tmp_path):
    folds = accuracy.speaker_folds(speech_commands_root, 3, tmp_path)
    every_clip = {
        f"{p.parent.name}/{p.name}"
        for p in speech_commands_root.glob("*/*.wav")
        if not p.parent.name.startswith("_")
    }
    tested = []
    for fold in folds:
        test = (fold / "testing_list.txt").read_text().split()
        val = (fold / "validation_list.txt").read_text().split()
        speakers = {accuracy.speaker_of(rel) for rel in test}
        assert speakers.isdisjoint(accuracy.speaker_of(rel) for rel in val)
        assert 0 < len(val) < len(every_clip) - len(test)  # some training clips remain
        tested += test
    assert sorted(tested) == sorted(every_clip)  # each clip tested once
    sizes = [len((f / "testing_list.txt").read_text().split()) for f in folds]
    assert max(sizes) - min(sizes) <= 1  # one clip per speaker here: folds of equal size
    again = accuracy.speaker_folds(speech_commands_root, 3, tmp_path / "again")
    assert [(f / "testing_list.txt").read_text() for f in again] == [
        (f / "testing_list.txt").read_text() for f in folds
    ]


def test_cross_validation_trains_every_fold(accuracy, speech_commands_root, tmp_path, capsys):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY)
    rng = np.random.default_rng(0)
    for i, level in enumerate([0.0, 0.001, 0.3]):  # real silence: from none to a loud room
        write_wav(tmp_path / "silence" / f"{i}.wav", level * rng.standard_normal(16000), 16000)
    (row,) = accuracy.main(
        [str(tiny), "--data-root", str(speech_commands_root), "--jobs", "2", "--threads", "1",
         "--seeds", "0", "--folds", "2", "--out-dir", str(tmp_path / "cv"),
         "--silence-dir", str(tmp_path / "silence"), "--official"]
    )  # fmt: skip
    assert 0.0 <= row["silence_recall_mean"] <= 1.0
    for result in (tmp_path / "cv" / "tiny").glob("*/result.json"):  # 3 clips: k/3 each
        assert round(3 * json.loads(result.read_text())["silence_recall"], 3) in {0, 1, 2, 3}
    assert row["folds"] == 2 and len(row["fold_accuracies"]) == 2
    assert row["accuracy_mean"] == round(sum(row["fold_accuracies"]) / 2, 4)
    assert row["accuracy_stderr"] >= 0.0
    # each fold tests half of the 168 word clips (unknown words subsampled) plus silence
    assert 60 < row["test_examples"] < 100
    printed = capsys.readouterr().out
    assert "2-fold CV (± s.e.)" in printed and "official_silence recall" in printed
    # --official: the recipe's own split too, beside the folds and not among them
    assert 0.0 <= row["official_accuracy_mean"] <= 1.0 and "testing split |" in printed
    assert len(list((tmp_path / "cv" / "tiny").glob("seed0-*/result.json"))) == 1
    runs = sorted((tmp_path / "cv" / "tiny").glob("k2-seed0-fold*-seed0-*/result.json"))
    assert [json.loads(r.read_text())["fold"] for r in runs] == ["fold0", "fold1"]


def test_digit_cross_validation_tests_each_speaker_once(accuracy, tmp_path, capsys):
    root = make_fsdd(tmp_path / "fsdd", speakers=("alice", "bob", "carol"), takes=8)
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY)
    (row,) = accuracy.main(
        [str(tiny), "--recipe", "free_spoken_digits", "--data-root", str(root), "--jobs", "2",
         "--threads", "1", "--seeds", "0", "--folds", "3", "--out-dir", str(tmp_path / "cv")]
    )  # fmt: skip
    assert row["folds"] == 3 and row["keyword_accuracy_mean"] is None
    assert row["silence_recall_mean"] is None and row["test_examples"] == 80  # 10 digits x 8 takes
    folds = sorted((tmp_path / "cv" / "folds" / "speakers3").glob("fold*/test_speakers.txt"))
    assert [f.read_text().split() for f in folds] == [["alice"], ["bob"], ["carol"]]
    configs = sorted(
        (tmp_path / "cv" / "tiny").glob("speakers3-fold*/lightning_logs/*/config.yaml")
    )
    assert len(configs) == 3 and "- bob" in configs[1].read_text()
    assert "3-fold CV (± s.e.)" in capsys.readouterr().out


def test_multiply_accumulates_counted_by_hand(accuracy):
    config = ClassifierConfig(
        n_mels=16, win_ms=25.0, hop_ms=10.0, cnn_channels=(4, 8), cnn_kernels=(3, 3),
        cnn_pools=(2, 2), lstm_hidden=16, lstm_layers=1, pooling="attention",
    )  # fmt: skip
    model = build_classifier(config, num_classes=12)
    frames = (16000 - 400) // 160 + 1  # 98
    expected = (
        frames
        * (
            2 * 400 * 9  # FFT of 400 samples
            + 201 * 16  # mel filterbank
            + 4 * 16 * 3  # conv 1: 4 channels x 16 bins, 1 x 3 taps each
            + 8 * 8 * 4 * 3  # conv 2: 8 channels x 8 bins, 4 x 3 taps each
            + 4 * 16 * (8 * 4 + 16)  # LSTM gates: input 8 channels x 4 bins, hidden 16
            + 16  # attention score
        )
        + 12 * 16
    )  # classifier, once per clip
    assert accuracy.multiply_accumulates(model, seconds=1.0) == expected
    assert model.training  # left as it was
    with pytest.raises(ValueError, match="0.01 s"):
        accuracy.multiply_accumulates(model, seconds=0.01)
