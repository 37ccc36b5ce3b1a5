"""The timing benchmarks run end to end at tiny sizes and print the figures they promise.

(benchmarks/accuracy.py has its own test; these check the scripts work, not their speed.)
"""

import json
import subprocess
import sys
from pathlib import Path

from test_classify import make_checkpoint

REPO = Path(__file__).resolve().parents[1]


def run_json(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_inference_benchmark(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    line = run_json(
        "benchmarks/inference.py", str(ckpt), "--data-root", str(tmp_path / "none"),
        "--repeats", "3", "--batch", "2", "--stream-s", "1", "--chunk-ms", "10,1000",
    )  # fmt: skip
    assert line["threads"] == 1
    for kind in ("float", "int8"):
        assert line[f"{kind}_latency_ms"] > 0 and line[f"{kind}_throughput_clips_s"] > 0
        for chunk in ("10", "1000"):
            assert line[f"{kind}_stream_{chunk}ms_rtf"] > 0
            assert line[f"{kind}_stream_{chunk}ms_us_per_10ms"] > 0


def test_train_throughput_benchmark(tmp_path):
    line = run_json(
        "benchmarks/train_throughput.py", "--clips", "48", "--batch-size", "8",
        "--data", str(tmp_path / "sc"), "--layer", "recipes/presets/small.yaml",
        "--workers", "1", "--warmup", "1", "--steps", "2", "--epochs", "2",
    )  # fmt: skip
    assert line["config"][-1] == "recipes/presets/small.yaml"
    assert line["parameters"] < 100_000  # the small preset's model, not the recipe's
    assert set(line["samples_per_s"]) == {"a", "b", "c1"}
    assert all(v > 0 for v in line["samples_per_s"].values())
    assert set(line["ratios"]) == {"a/b", "a/c1"}
    assert line["projected_epoch_s_84843"]["a"] > 0
