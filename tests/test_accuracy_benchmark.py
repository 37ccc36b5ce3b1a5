"""benchmarks/accuracy.py end to end on the tiny synthetic data set: seeds, reuse, table, plot."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

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


def test_study_configurations_exist(accuracy):
    for config in accuracy.STUDY:
        assert accuracy.config_files(config) or config == "default"
    assert accuracy.config_files("default") == []
    with pytest.raises(FileNotFoundError, match="study/nonsense"):
        accuracy.config_files("study/base+study/nonsense")


def test_errors_are_counted_by_clip_and_speaker(accuracy):
    paths = ["sc/down/aaa_nohash_0.wav", "sc/go/aaa_nohash_1.wav", "sc/go/bbb_nohash_0.wav",
             "_silence_/test_0"]  # fmt: skip
    summary = accuracy.summarise_errors([2, 1, 0, 0], paths, n_runs=2, top=2)
    assert summary["errors"] == 3 and summary["speakers"] == 3 and summary["clips"] == 4
    assert summary["clips_wrong_in_k_runs"] == {0: 2, 1: 1, 2: 1}
    assert summary["top_speakers"][0] == {
        "speaker": "aaa", "clips": 2, "errors": 3, "share_of_clips": 0.5, "share_of_errors": 1.0
    }  # fmt: skip
    assert len(summary["top_speakers"]) == 2
    assert summary["wrong_in_every_run"] == ["down/aaa_nohash_0.wav"]
    assert accuracy.speaker_of("_silence_/test_0") == "(no speaker)"


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
    printed = capsys.readouterr().out
    assert json.loads(printed.splitlines()[0]) == row
    assert "| tiny |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "plot.png").stat().st_size > 1000

    # A finished run is reused, not retrained: its result file is read back as it is.
    result = next((tmp_path / "a").glob("*/seed0/result.json"))
    stamp = result.stat().st_mtime_ns
    again = accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(tmp_path / "a")])
    assert result.stat().st_mtime_ns == stamp and again[0]["accuracies"][0] == row["accuracies"][0]

    # The same settings under another name (a layer that repeats one of them) are the same
    # run: reused from the first name's folder, not retrained.
    repeat = tmp_path / "repeat.yaml"
    repeat.write_text("trainer:\n  max_epochs: 2\n")
    respelled = f"{tiny}+{repeat}"
    same = accuracy.main([respelled, *common, "--seeds", "0", "--out-dir", str(tmp_path / "a")])
    assert same[0]["accuracies"][0] == row["accuracies"][0]
    assert not any((tmp_path / "a").glob("*repeat*"))

    # An ensemble of one run scores what that run scored.
    accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(tmp_path / "a"),
                   "--ensemble"])  # fmt: skip
    one = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert one["ensemble_members"] == 1 and one["test_examples"] == row["test_examples"]
    assert one["ensemble_accuracy"] == pytest.approx(row["accuracies"][0], abs=1e-4)
    assert one["ensemble_by_configuration"] == {"tiny": one["ensemble_accuracy"]}

    # Where a run errs: every clip it got wrong counts once, and all are wrong in every run.
    accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(tmp_path / "a"),
                   "--errors"])  # fmt: skip
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    n = row["test_examples"]
    assert report["errors_of"] == "tiny" and report["runs"] == 1 and report["clips"] == n
    assert report["errors"] == round((1 - row["accuracies"][0]) * n)
    assert len(report["wrong_in_every_run"]) == report["errors"]

    # A run that trained to the end but whose result was never written (the benchmark was
    # stopped in between) is recorded from its training log, not trained again.
    stopped = tmp_path / "stopped"
    shutil.copytree(result.parent, stopped / result.parent.parent.name / "seed0")
    (stopped / result.parent.parent.name / "seed0" / "result.json").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in stopped.rglob("*.ckpt")}
    recorded_again = accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(stopped)])
    assert recorded_again[0]["accuracies"] == row["accuracies"][:1]
    copied = json.loads((stopped / result.parent.parent.name / "seed0" / "result.json").read_text())
    assert copied["tested_checkpoint"].startswith(str(stopped))
    assert stamps == {p: p.stat().st_mtime_ns for p in stopped.rglob("*.ckpt")}
    assert "recorded from its finished training log" in capsys.readouterr().err

    # The same seed trained afresh gives the same accuracy.
    fresh = accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(tmp_path / "b")])
    assert fresh[0]["accuracies"] == row["accuracies"][:1]

    # The recipe tests the weights after the last epoch, and the benchmark's own test of that
    # checkpoint (how it tests a finished run under another rule) gives the recipe's figure.
    recorded = json.loads(result.read_text())
    assert recorded["test_checkpoint"] == "last"
    assert recorded["tested_checkpoint"] == str(result.parent / "checkpoints" / "last.ckpt")
    retested = accuracy.test_checkpoint(recorded["tested_checkpoint"], str(tiny),
                                        speech_commands_root)  # fmt: skip
    assert retested["test_accuracy"] == recorded["test_accuracy"] == row["accuracies"][0]
    assert retested["test_keyword_accuracy"] == recorded["test_keyword_accuracy"]
    # A layer asking for the best validation epoch reuses the run, tests that checkpoint and
    # keeps both tests in the run's result.json.
    best = tmp_path / "best.yaml"
    best.write_text("test_checkpoint: best\n")
    by_best = accuracy.main([f"{tiny}+{best}", *common, "--seeds", "0", "--out-dir",
                             str(tmp_path / "a")])  # fmt: skip
    assert by_best[0]["tested"] == "best" and not any((tmp_path / "a").glob("*best*"))
    tests = json.loads(result.read_text())["tests"]
    assert set(tests) == {"last", "best"}
    assert tests["best"]["tested_checkpoint"] == recorded["best_checkpoint"]
    assert by_best[0]["accuracies"] == [tests["best"]["test_accuracy"]]
    # A run from before the seventh session (tested at its best epoch, no final-epoch weights)
    # keeps its best-epoch figure under the last-epoch rule, and the row says so.
    older = {k: v for k, v in recorded.items() if k not in ("tests", "test_checkpoint",
                                                             "tested_checkpoint")}  # fmt: skip
    result.write_text(json.dumps(older | {"epochs": 3, "test_accuracy": 0.5}))
    kept = accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(tmp_path / "a")])
    assert kept[0]["tested"] == "best" and kept[0]["accuracies"] == [0.5]
    assert "no checkpoint after the last epoch" in capsys.readouterr().err
    result.write_text(json.dumps(recorded))
    stamp = result.stat().st_mtime_ns

    # Changed settings are retrained, not reused; a comment is not a change, nor is a layer that
    # writes out settings at their defaults (how a study layer stays valid when the recipe's
    # default moves).
    tiny.write_text(TINY + "# a comment\n")
    accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(tmp_path / "a")])
    assert result.stat().st_mtime_ns == stamp
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text("model:\n  compile: false\ndata:\n  init_args: {speed_perturb: 0}\n")
    same = accuracy.main([f"{tiny}+{pinned}", *common, "--seeds", "0", "--out-dir",
                          str(tmp_path / "a")])  # fmt: skip
    assert same[0]["accuracies"][0] == row["accuracies"][0]
    assert result.stat().st_mtime_ns == stamp and not any((tmp_path / "a").glob("*pinned*"))
    # A run recorded under an older fingerprint is still found, from the config it saved.
    recorded = json.loads(result.read_text())
    result.write_text(json.dumps(recorded | {"fingerprint": "from-an-older-version"}))
    stamp = result.stat().st_mtime_ns
    again = accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(tmp_path / "a")])
    assert again[0]["accuracies"][0] == row["accuracies"][0]
    assert result.stat().st_mtime_ns == stamp
    tiny.write_text(TINY.replace("max_epochs: 2", "max_epochs: 1"))
    changed = accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(tmp_path / "a")])
    assert result.stat().st_mtime_ns != stamp and changed[0]["epochs"] == 1
    # The run the old settings made is kept beside the new one, not deleted.
    (kept,) = result.parent.parent.glob("seed0.replaced-*")
    assert json.loads((kept / "result.json").read_text())["test_accuracy"] == row["accuracies"][0]
    # It still serves its own settings: asked for them again, it is reused, not trained again,
    # and its checkpoints are found where it lies now, not where it was trained.
    tiny.write_text(TINY)
    back = accuracy.main([str(tiny), *common, "--seeds", "0", "--out-dir", str(tmp_path / "a")])
    assert back[0]["accuracies"][0] == row["accuracies"][0] and back[0]["epochs"] == 2
    assert len(list(result.parent.parent.glob("seed0.replaced-*"))) == 1
    found = accuracy.finished_run(
        tmp_path / "a", accuracy.fingerprint(str(tiny), speech_commands_root), 0
    )
    assert Path(found["tested_checkpoint"]) == kept / "checkpoints" / "last.ckpt"
    assert Path(found["best_checkpoint"]).parent == kept / "checkpoints"
