"""The timing benchmarks run end to end at tiny sizes and print the figures they promise.

(benchmarks/accuracy.py has its own test; these check the scripts work, not their speed, and
how the spotting benchmark scores detections.)
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_classify import make_checkpoint
from test_streaming import tiny_model

from speechcnn.spotting import Detection

REPO = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> list[str]:
    """The lines a benchmark script prints, after checking that it succeeded."""
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()


def run_json(*args: str) -> dict:
    """The JSON line a benchmark script prints last."""
    return json.loads(run_script(*args)[-1])


def test_inference_benchmark(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    line = run_json(
        "benchmarks/inference.py", str(ckpt), "--data-root", str(tmp_path / "none"),
        "--repeats", "3", "--batch", "2", "--stream-s", "1", "--chunk-ms", "10,1000",
    )  # fmt: skip
    assert line["threads"] == 1
    for kind in ("float", "int8"):
        assert line[f"{kind}_latency_ms"] > 0 and line[f"{kind}_throughput_clips_s"] > 0
    for kind in ("float", "float_modules", "int8"):
        for chunk in ("10", "1000"):
            assert line[f"{kind}_stream_{chunk}ms_rtf"] > 0
            assert line[f"{kind}_stream_{chunk}ms_us_per_10ms"] > 0


def test_train_throughput_benchmark(tmp_path):
    lines = run_script(
        "benchmarks/train_throughput.py", "--clips", "48", "--batch-size", "8",
        "--data", str(tmp_path / "sc"), "--layer", "recipes/presets/small.yaml",
        "--workers", "1", "--warmup", "1", "--steps", "2", "--epochs", "2", "--profile",
    )  # fmt: skip
    # --profile: where the step's time goes, for both training loops (in an untimed epoch).
    profiles = [s for s in lines if s.startswith("profile (")]
    assert [s.split(":")[0] for s in profiles] == ["profile (a) speechcnn Lightning",
                                                    "profile (b) bare loop"]  # fmt: skip
    assert all("ms/step wall" in s and "operators/step" in s for s in profiles)
    line = json.loads(lines[-1])
    assert line["config"][-1] == "recipes/presets/small.yaml"
    assert line["parameters"] < 100_000  # the small preset's model, not the recipe's
    assert set(line["samples_per_s"]) == {"a", "b", "c1"}
    assert all(v > 0 for v in line["samples_per_s"].values())
    assert set(line["ratios"]) == {"a/b", "a/c1"}
    assert line["projected_epoch_s_84843"]["a"] > 0


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / f"benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spotting_hits_need_the_right_word_over_the_word_centre():
    spotting = load_benchmark("spotting")
    sr = 16000
    clip = 0.001 * np.random.default_rng(0).standard_normal(sr)
    clip[int(0.7 * sr) : int(0.9 * sr)] += np.sin(np.arange(int(0.2 * sr)) * 0.3)  # the word
    assert spotting.word_centre(clip, sr) == pytest.approx(0.8, abs=0.011)
    truth = [{"word": "yes", "start": 10.0, "end": 11.0, "centre": 10.8}]
    detections = [
        Detection("yes", 10.7, 11.7, 0.9),  # overlaps the clip by 0.3 s but holds the word: hit
        Detection("yes", 10.75, 11.75, 0.9),  # the same clip again: a false alarm
        Detection("no", 10.0, 11.0, 0.9),  # the wrong word
        Detection("yes", 10.85, 11.85, 0.9),  # misses the word's centre
    ]
    result = spotting.score(detections, truth, seconds=3600.0)
    assert result["detection_rate"] == 1.0 and result["false_alarms"] == 3
    assert result["fa_per_hour"] == 3.0


def test_spotting_benchmark(tmp_path, speech_commands_root):
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    lines = run_script(
        "benchmarks/spotting.py", str(ckpt), "--data-root", str(speech_commands_root),
        "--out-dir", str(tmp_path / "spot"), "--plot", str(tmp_path / "curve.png"),
        "--centre-s", "0.15", "0",
    )  # fmt: skip
    # one line per --centre-s value, from the same posterior track; 0 counts every window
    centred, line = (json.loads(text) for text in lines[-2:])
    assert centred["centre_s"] == 0.15 and line["centre_s"] is None
    assert centred["test_clip_posteriors"] == line["test_clip_posteriors"]
    sweeps = json.loads((tmp_path / "spot" / "sweep_window.json").read_text())
    assert set(sweeps) == {"0.15", "None"}
    assert line["test_keywords"] == 30  # 3 testing clips of each of the 10 keywords
    assert 0.0 <= line["test_detection_rate"] <= 1.0 and line["test_fa_per_hour"] >= 0.0
    assert line["test_stream_minutes"] > 1.0 and (tmp_path / "curve.png").stat().st_size > 0
    assert set(line["test_clip_posteriors"]) == {"0.5", "0.9", "0.95"}  # of "yes" and "no"
    truth = json.loads((tmp_path / "spot" / "testing_list_truth.json").read_text())
    assert len(truth) == 42 and all(g["end"] - g["start"] == pytest.approx(1.0) for g in truth)


def test_int8_accuracy_change_scores_the_testing_split(speech_commands_root):
    from speechcnn.data.speech_commands import SpeechCommandsDataModule

    model = tiny_model(seed=2)
    result = load_benchmark("int8_accuracy").int8_accuracy_change(model, speech_commands_root)
    data = SpeechCommandsDataModule(root=str(speech_commands_root))
    data.setup("test")
    test = data.clips["test"]
    with torch.no_grad():  # the whole split in one batch, as the reference
        logits = model(test.waveforms.float() / 32768.0, test.lengths)
    expected = float((logits.argmax(-1) == test.labels).float().mean())
    assert result["test_clips"] == len(test)
    assert result["float_acc"] == pytest.approx(expected, abs=1e-4)
    assert 0.0 <= result["int8_acc"] <= 1.0
    assert result["change"] == pytest.approx(result["int8_acc"] - result["float_acc"], abs=1e-4)
