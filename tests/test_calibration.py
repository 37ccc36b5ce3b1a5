"""`speechcnn calibrate`: each keyword of a Speech Commands model gets its own threshold for a
share of the false-alarm budget, stored in the checkpoint and used by `spot`."""

import json
from pathlib import Path

import pytest
from test_classify import make_checkpoint

from speechcnn import calibration
from speechcnn.checkpoints import load_checkpoint
from speechcnn.classify import load_classifier
from speechcnn.cli import main
from speechcnn.data.speech_commands import KEYWORDS, class_names

REPO = Path(__file__).resolve().parents[1]


def test_calibrate_stores_a_threshold_per_keyword(
    speech_commands_root, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(calibration, "MIN_NEGATIVE_HOURS", 0.01)
    (tmp_path / "run/checkpoints").mkdir(parents=True)
    # random weights: any curve will do
    ckpt = make_checkpoint(tmp_path / "run/checkpoints/last.ckpt", classes=class_names("12"))
    main(["calibrate", "--config", str(REPO / "recipes/speech_commands.yaml"),
          "--data.root", str(speech_commands_root), "--data.cache_dir", str(tmp_path / "c"),
          "--ckpt_path", str(ckpt), "--budget_fa_per_hour", "20"])  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["keywords_calibrated"] == list(KEYWORDS)
    assert set(summary["keywords"]) == set(KEYWORDS) and summary["negative_hours"] >= 0.01
    stored = load_checkpoint(ckpt)["calibration"]
    curves = json.loads((ckpt.parent.parent / "det.json").read_text())["validation"]
    for word in KEYWORDS:  # each keyword's own threshold, for its share of the 20 per hour
        assert stored["keyword_thresholds"][word] == calibration.threshold_for(curves[word], 2.0)
    assert (
        load_classifier(ckpt).calibration["spot"]["keyword_thresholds"]
        == stored["keyword_thresholds"]
    )
    assert (ckpt.parent.parent / "det.png").stat().st_size > 1000


def test_a_model_without_the_data_keywords_is_refused(speech_commands_root, tmp_path, capsys):
    (tmp_path / "run/checkpoints").mkdir(parents=True)
    ckpt = make_checkpoint(tmp_path / "run/checkpoints/last.ckpt")  # _silence_, _unknown_, yes, no
    with pytest.raises(SystemExit):
        main(["calibrate", "--config", str(REPO / "recipes/speech_commands.yaml"),
              "--data.root", str(speech_commands_root), "--ckpt_path", str(ckpt)])  # fmt: skip
    assert "no class 'up'" in capsys.readouterr().err.strip().splitlines()[-1]


def test_calibrate_names_what_it_needs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--config", "recipes/speech_commands.yaml"])
    assert exit_info.value.code == 2
    assert "--ckpt_path" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_budget_that_is_not_positive_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--config", "recipes/speech_commands.yaml", "--ckpt_path", "x.ckpt",
              "--budget_fa_per_hour", "0"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "--budget_fa_per_hour: must be positive, got 0" in capsys.readouterr().err
