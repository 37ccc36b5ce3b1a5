"""A wake-word detector's threshold, chosen for a false-alarm budget, and its DET curve.

Run as `speechcnn spot` runs it, the detector counts false alarms per hour on a long stream of
other speech joined by gaps of noise, and the recordings it finds in a stream of the phrase's.
The threshold, the lowest within the budget on the validation streams, is stored in the
checkpoint (`calibration`) for `spot` and `listen`; the test streams give the DET curve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch

from speechcnn.checkpoints import load_checkpoint
from speechcnn.data.wake_word import SPLITS, WakeWordDataModule, join_with_gaps
from speechcnn.model import SpeechClassifier
from speechcnn.spotting import PosteriorTrack, SpotConfig, detect, posterior_track

FA_POINTS = (0.5, 1.0, 2.0, 5.0)  # false alarms per hour the JSON line reports recall at
MIN_NEGATIVE_HOURS = 0.5
# every 0.01 to 0.99, then ever closer to 1: a detector's useful thresholds sit near its cap
THRESHOLDS = np.unique(np.concatenate([np.linspace(0.05, 0.99, 95), 1 - np.logspace(-2, -6, 33)]))


def detection_ends(
    track: PosteriorTrack, class_names: list[str], config: SpotConfig, thresholds: np.ndarray
) -> list[np.ndarray]:
    """End times in seconds of the detections at each threshold, exactly as `spot` finds them."""
    configs = [dataclasses.replace(config, threshold=float(t)) for t in thresholds]
    return [np.array([d.end for d in detect(track, class_names, c)]) for c in configs]


def found(ends: np.ndarray, spans: np.ndarray, late_s: float) -> np.ndarray:
    """(N,) whether a detection ends within each recording, or up to `late_s` after it."""
    inside = (ends[None, :] >= spans[:, :1]) & (ends[None, :] <= spans[:, 1:] + late_s)  # (N, D)
    return inside.any(axis=1)


@torch.no_grad()
def det_curve(
    model: SpeechClassifier,
    class_names: list[str],
    positives: list[np.ndarray],
    negatives: list[np.ndarray],
    noise: list[np.ndarray],
    config: SpotConfig,
    seed: int = 0,
) -> dict:
    """False alarms per hour and recall at each of `THRESHOLDS`, as a dict of plain values."""
    rate = model.features.sample_rate
    rng = np.random.default_rng(seed)
    positive_stream, spans = join_with_gaps(positives, noise, rate, rng)
    negative_stream, _ = join_with_gaps(negatives, noise, rate, rng, MIN_NEGATIVE_HOURS * 3600)
    hours = len(negative_stream) / rate / 3600
    false_alarms, hits = (
        detection_ends(posterior_track(model.eval(), s, config), class_names, config, THRESHOLDS)
        for s in (negative_stream, positive_stream)
    )
    return {
        "thresholds": [round(float(t), 7) for t in THRESHOLDS],
        "fa_per_hour": [round(len(ends) / hours, 3) for ends in false_alarms],
        "recall": [round(float(found(ends, spans, config.window_s).mean()), 4) for ends in hits],
        "negative_hours": round(hours, 3),
        "positives": len(positives),
    }


def threshold_for(curve: dict, budget: float) -> float:
    """The lowest threshold with at most `budget` false alarms per hour (else the highest)."""
    pairs = zip(curve["thresholds"], curve["fa_per_hour"], strict=True)
    return min((t for t, fa in pairs if fa <= budget), default=max(curve["thresholds"]))


def recall_at(curve: dict, fa_per_hour: float) -> float:
    """The best recall among thresholds with at most `fa_per_hour` false alarms per hour."""
    pairs = zip(curve["recall"], curve["fa_per_hour"], strict=True)
    return max((recall for recall, fa in pairs if fa <= fa_per_hour), default=0.0)


def at_threshold(curve: dict, threshold: float) -> tuple[float, float]:
    """(recall, false alarms per hour) of `curve` at the grid threshold nearest `threshold`."""
    i = int(np.argmin(np.abs(np.array(curve["thresholds"]) - threshold)))
    return curve["recall"][i], curve["fa_per_hour"][i]


def plot_det(curve: dict, path: Path, title: str) -> None:
    """Miss rate against false alarms per hour, as wake-word detectors are compared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    fa = np.maximum(np.array(curve["fa_per_hour"]), 1e-2)  # none at all drawn at 0.01
    ax.plot(fa, 100 * (1 - np.array(curve["recall"])), marker=".")
    ax.set(xscale="log", title=title)
    ax.set_xlabel(f"false alarms per hour ({curve['negative_hours']:.2f} h of negatives)")
    ax.set_ylabel(f"miss rate (%) of {curve['positives']} recordings")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def store_calibration(checkpoint: str | Path, calibration: dict) -> None:
    """Write `calibration` (plain values) into a checkpoint, atomically."""
    tmp = Path(f"{checkpoint}.tmp")
    torch.save({**load_checkpoint(checkpoint), "calibration": calibration}, tmp)
    os.replace(tmp, checkpoint)


def calibrate_and_test(
    model: SpeechClassifier,
    class_names: list[str],
    data: WakeWordDataModule,
    checkpoint: str | Path,
    run_dir: Path,
    budget_fa_per_hour: float = 1.0,
    config: SpotConfig | None = None,
) -> dict:
    """Choose the threshold on the validation streams, store it in `checkpoint`, measure the
    test streams, write det.png and det.json into `run_dir`, and return the summary."""
    if budget_fa_per_hour <= 0:
        raise ValueError(f"budget_fa_per_hour must be positive, got {budget_fa_per_hour}")
    window_s = data.num_samples / data.sample_rate
    config = config or SpotConfig(window_s=window_s, hop_s=0.1, refractory_s=1.5)
    noise = data.noise()

    def curve(split: str, negative_files: list[Path]) -> dict:
        positives = data.recordings(data.positive_files(split))
        negatives = data.recordings(negative_files)
        return det_curve(model, class_names, positives, negatives, noise, config, data.seed)

    validation = curve("val", data.negative_files("val"))
    threshold = threshold_for(validation, budget_fa_per_hour)
    eval_roots = data.eval_negative_roots
    # Speech the training never saw is used whole; else the held-out share of the negatives.
    splits = SPLITS if eval_roots else ("test",)
    test = curve("test", [f for split in splits for f in data.negative_files(split, eval_roots)])
    calibration = {
        "threshold": threshold,
        "budget_fa_per_hour": budget_fa_per_hour,
        "spot": dataclasses.asdict(dataclasses.replace(config, threshold=threshold)),
        "validation_negative_hours": validation["negative_hours"],
    }
    store_calibration(checkpoint, calibration)
    recall, fa = at_threshold(test, threshold)
    summary = {
        "phrase": data.phrase,
        "recall_at_1_fa_per_hour": recall_at(test, 1.0),
        "recall_at_fa_per_hour": {str(x): recall_at(test, x) for x in FA_POINTS},
        "threshold": threshold,
        "test_recall_at_threshold": recall,
        "test_fa_per_hour_at_threshold": fa,
        "negative_hours": test["negative_hours"],
        "test_positives": test["positives"],
        "eval_negatives": "eval_negative_roots" if eval_roots else "held-out negatives",
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "det.json").write_text(json.dumps({"validation": validation, "test": test}) + "\n")
    plot_det(test, run_dir / "det.png", f"{data.phrase}: test recordings")
    return summary


def run_wake_word(config: str | Path, argv: list[str]) -> dict:
    """The wake-word recipe: `run_recipe`, then `calibrate_and_test` on its tested checkpoint.
    `--budget_fa_per_hour X` (default 1) is the recipe's own option; the rest is the CLI's."""
    from speechcnn.classify import load_classifier
    from speechcnn.cli import build_cli
    from speechcnn.recipe import run_recipe

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--budget_fa_per_hour", type=float, default=1.0)
    own, argv = parser.parse_known_args(argv)
    if own.budget_fa_per_hour <= 0:
        raise ValueError(f"--budget_fa_per_hour must be positive, got {own.budget_fa_per_hour}")
    metrics = run_recipe(config, argv)
    cli = build_cli(["--config", str(config), *argv], run=False)
    data = cli.datamodule
    data.run_check()  # leaves out the files the check finds unusable, as training did
    checkpoint = metrics["tested_checkpoint"]
    loaded = load_classifier(checkpoint)
    run_dir = Path(checkpoint).parent.parent
    summary = calibrate_and_test(
        loaded.model, loaded.class_names, data, checkpoint, run_dir, own.budget_fa_per_hour
    )
    summary |= {key: metrics.get(key) for key in ("test_accuracy", "train_seconds")}
    print(json.dumps(summary), flush=True)
    return summary


def wake_word_main(config: str | Path, argv: list[str]) -> None:
    """`run_wake_word` for the recipe script, with one-line errors (see `speechcnn.errors`)."""
    from speechcnn.errors import run_reporting_errors

    run_reporting_errors(lambda args: run_wake_word(config, args), argv, Path(config).stem)
