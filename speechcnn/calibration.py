"""Keyword thresholds chosen for a false-alarm budget, and the DET curves behind them.

Run as `speechcnn spot` runs it, the detector counts false alarms per hour on a long stream of
other speech joined by gaps of noise, and the recordings of each keyword it finds in a stream
of them. Each keyword's threshold, chosen on the validation streams for its share of the
budget, is stored in the checkpoint (`calibration`) for `spot` and `listen`; the test streams
give the DET curves. The wake-word recipe ends with it; `speechcnn calibrate` runs it on any
trained checkpoint (a wake word, or the keywords of a Speech Commands model).
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
from speechcnn.data.base import ClipDataModule
from speechcnn.data.wake_word import join_with_gaps
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


def only(track: PosteriorTrack, class_names: list[str], keyword: str) -> PosteriorTrack:
    """`track` with every other class's posterior set to 0: detections of `keyword` alone."""
    posteriors = np.zeros_like(track.posteriors)
    k = class_names.index(keyword)
    posteriors[:, k] = track.posteriors[:, k]
    return dataclasses.replace(track, posteriors=posteriors)


@torch.no_grad()
def det_curves(
    model: SpeechClassifier,
    class_names: list[str],
    positives: dict[str, list[np.ndarray]],
    negatives: list[np.ndarray],
    noise: list[np.ndarray],
    config: SpotConfig,
    seed: int = 0,
) -> dict[str, dict]:
    """Each keyword's false alarms per hour and recall at each of `THRESHOLDS`, plain values.

    A false alarm of a keyword is its detection in the negative stream or within another
    keyword's recording; its recall is the share of its own recordings found."""
    rate = model.features.sample_rate
    rng = np.random.default_rng(seed)
    words = [w for w in positives if positives[w]]
    recordings = [r for w in words for r in positives[w]]
    labels = np.array([w for w in words for _ in positives[w]])
    positive_stream, spans = join_with_gaps(recordings, noise, rate, rng)
    negative_stream, _ = join_with_gaps(negatives, noise, rate, rng, MIN_NEGATIVE_HOURS * 3600)
    hours = len(negative_stream) / rate / 3600
    tracks = [posterior_track(model.eval(), s, config) for s in (negative_stream, positive_stream)]
    curves = {}
    for word in words:
        false_alarms, hits = (
            detection_ends(only(t, class_names, word), class_names, config, THRESHOLDS)
            for t in tracks
        )
        own, others = spans[labels == word], spans[labels != word]
        alarms = [
            len(n) + int(found(h, others, 0.0).sum() if len(others) else 0)
            for n, h in zip(false_alarms, hits, strict=True)
        ]
        curves[word] = {
            "thresholds": [round(float(t), 7) for t in THRESHOLDS],
            "fa_per_hour": [round(a / hours, 3) for a in alarms],
            "recall": [round(float(found(h, own, config.window_s).mean()), 4) for h in hits],
            "negative_hours": round(hours, 3),
            "positives": len(own),
        }
    return curves


def threshold_for(curve: dict, budget: float) -> float:
    """The threshold in the middle of those that find the most recordings with at most `budget`
    false alarms per hour (else the highest): a margin on both sides, against more false alarms
    below it and more misses above it on unseen audio."""
    rows = zip(curve["thresholds"], curve["fa_per_hour"], curve["recall"], strict=True)
    within = [(t, recall) for t, fa, recall in rows if fa <= budget]
    if not within:
        return max(curve["thresholds"])
    best = max(recall for _, recall in within)
    tied = [t for t, recall in within if recall == best]
    middle = (min(tied) + max(tied)) / 2
    return min(tied, key=lambda t: abs(t - middle))


def recall_at(curve: dict, fa_per_hour: float) -> float:
    """The best recall among thresholds with at most `fa_per_hour` false alarms per hour."""
    pairs = zip(curve["recall"], curve["fa_per_hour"], strict=True)
    return max((recall for recall, fa in pairs if fa <= fa_per_hour), default=0.0)


def at_threshold(curve: dict, threshold: float) -> tuple[float, float]:
    """(recall, false alarms per hour) of `curve` at the grid threshold nearest `threshold`."""
    i = int(np.argmin(np.abs(np.array(curve["thresholds"]) - threshold)))
    return curve["recall"][i], curve["fa_per_hour"][i]


def plot_det(curves: dict[str, dict], path: Path, title: str) -> None:
    """Miss rate against false alarms per hour, one line per keyword, as wake-word detectors
    are compared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for word, curve in curves.items():
        fa = np.maximum(np.array(curve["fa_per_hour"]), 1e-2)  # none at all drawn at 0.01
        label = f"{word} ({curve['positives']})"
        ax.plot(fa, 100 * (1 - np.array(curve["recall"])), marker=".", label=label)
    hours = next(iter(curves.values()))["negative_hours"]
    ax.set(xscale="log", title=title)
    ax.set_xlabel(f"false alarms per hour ({hours:.2f} h of negatives)")
    ax.set_ylabel("miss rate (%) of the recordings")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
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
    data: ClipDataModule,
    checkpoint: str | Path,
    run_dir: Path,
    budget_fa_per_hour: float = 1.0,
    config: SpotConfig | None = None,
) -> dict:
    """Choose each keyword's threshold on the validation streams for an even share of the
    budget, store them in `checkpoint`, measure the test streams, write det.png and det.json
    into `run_dir`, and return the summary (one keyword's figures at the top level; several
    keywords' means there, each keyword's figures under "keywords"). `data` gives
    `calibration_set(split)` (each keyword's recordings, recordings of no keyword), `noise()`
    and `eval_negatives`: WakeWordDataModule and SpeechCommandsDataModule do."""
    if budget_fa_per_hour <= 0:
        raise ValueError(f"budget_fa_per_hour must be positive, got {budget_fa_per_hour}")
    window_s = data.num_samples / data.sample_rate
    config = config or SpotConfig(window_s=window_s, hop_s=0.1, refractory_s=1.5)
    noise = data.noise()

    def curves(split: str) -> dict[str, dict]:
        positives, negatives = data.calibration_set(split)
        if lost := [w for w in positives if w not in class_names]:
            raise ValueError(
                f"the model has no class {lost[0]!r} of the data's keywords: its classes are "
                f"{class_names}; calibrate it with the data it was trained on"
            )
        return det_curves(model, class_names, positives, negatives, noise, config, data.seed)

    validation, test = curves("val"), curves("test")
    share = budget_fa_per_hour / len(validation)
    thresholds = {w: threshold_for(validation[w], share) for w in validation}
    spot = dataclasses.replace(
        config, threshold=min(thresholds.values()), keyword_thresholds=thresholds
    )
    calibration = {
        "threshold": spot.threshold,
        "keyword_thresholds": thresholds,
        "budget_fa_per_hour": budget_fa_per_hour,
        "spot": dataclasses.asdict(spot),
        "validation_negative_hours": next(iter(validation.values()))["negative_hours"],
    }
    store_calibration(checkpoint, calibration)
    keywords = {}
    for word, curve in test.items():
        threshold = thresholds.get(word, spot.threshold)  # a keyword no validation clip has
        recall, fa = at_threshold(curve, threshold)
        keywords[word] = {
            "threshold": threshold,
            "recall_at_fa_per_hour": {str(x): recall_at(curve, x / len(test)) for x in FA_POINTS},
            "test_recall_at_threshold": recall,
            "test_fa_per_hour_at_threshold": fa,
            "test_positives": curve["positives"],
        }

    def mean(key: str) -> float:
        return round(float(np.mean([k[key] for k in keywords.values()])), 4)

    points = [str(x) for x in FA_POINTS]
    recall = {
        x: round(float(np.mean([k["recall_at_fa_per_hour"][x] for k in keywords.values()])), 4)
        for x in points
    }
    summary = {
        "keywords_calibrated": list(keywords),
        "recall_at_1_fa_per_hour": recall["1.0"],
        "recall_at_fa_per_hour": recall,
        "threshold": spot.threshold,
        "test_recall_at_threshold": mean("test_recall_at_threshold"),
        "test_fa_per_hour_at_threshold": round(
            sum(k["test_fa_per_hour_at_threshold"] for k in keywords.values()), 3
        ),
        "negative_hours": next(iter(test.values()))["negative_hours"],
        "test_positives": sum(k["test_positives"] for k in keywords.values()),
        "eval_negatives": data.eval_negatives,
    }
    if len(keywords) > 1:
        summary["keywords"] = keywords
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "det.json").write_text(json.dumps({"validation": validation, "test": test}) + "\n")
    plot_det(test, run_dir / "det.png", "test recordings")
    return summary


def calibrate_checkpoint(argv: list[str], extra: dict | None = None) -> dict:
    """`speechcnn calibrate --config CONFIG --ckpt_path CKPT [--budget_fa_per_hour X]`: the
    thresholds of a trained checkpoint for a budget, stored in it; prints the summary (with
    `extra`'s items) as one JSON line and returns it."""
    from speechcnn.classify import load_classifier
    from speechcnn.cli import build_cli

    parser = argparse.ArgumentParser(
        prog="speechcnn calibrate",
        description="Choose each keyword's detection threshold for a false-alarm budget on the "
        "validation recordings, store it in the checkpoint and report the test recordings' "
        "DET curves (det.png, det.json beside the checkpoints). Other options (--data.root "
        "DIR, ...) override the config's, as for `speechcnn test`.",
    )
    parser.add_argument(
        "--config", action="append", required=True,
        help="the run's config.yaml or the recipe's YAML; repeat to stack (required)",
    )  # fmt: skip
    parser.add_argument("--ckpt_path", required=True, help="the trained checkpoint (required)")
    add_budget_option(parser)
    own, rest = parser.parse_known_args(argv)
    configs = [arg for path in own.config for arg in ("--config", path)]
    data = build_cli([*configs, *rest], run=False).datamodule
    if not hasattr(data, "calibration_set"):
        raise ValueError(f"{type(data).__name__} cannot calibrate: it gives no keyword streams")
    data.run_check()  # leaves out the files the check finds unusable, as training did
    loaded = load_classifier(own.ckpt_path)
    run_dir = Path(own.ckpt_path).parent.parent
    summary = calibrate_and_test(
        loaded.model, loaded.class_names, data, own.ckpt_path, run_dir, own.budget_fa_per_hour
    ) | (extra or {})
    print(json.dumps(summary), flush=True)
    return summary


def add_budget_option(parser: argparse.ArgumentParser) -> None:
    """`--budget_fa_per_hour X`, a positive number (default 1)."""

    def positive(text: str) -> float:
        if not float(text) > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return float(text)

    parser.add_argument(
        "--budget_fa_per_hour", type=positive, default=1.0,
        help="false alarms per hour allowed, shared evenly by the keywords (default: 1)",
    )  # fmt: skip


def run_wake_word(config: str | Path, argv: list[str]) -> dict:
    """The wake-word recipe: `run_recipe` (its own `--budget_fa_per_hour X` aside), then
    `calibrate_checkpoint` on the tested checkpoint, with test accuracy and training time."""
    from speechcnn.recipe import run_recipe

    budget = argparse.ArgumentParser(prog=Path(config).stem, add_help=False)
    add_budget_option(budget)
    _, training = budget.parse_known_args(argv)  # a bad budget fails before training
    metrics = run_recipe(config, training)
    extra = {key: metrics.get(key) for key in ("test_accuracy", "train_seconds")}
    checkpoint = str(metrics["tested_checkpoint"])
    return calibrate_checkpoint(["--config", str(config), *argv, "--ckpt_path", checkpoint], extra)


def wake_word_main(config: str | Path, argv: list[str]) -> None:
    """`run_wake_word` for the recipe script, with one-line errors (see `speechcnn.errors`)."""
    from speechcnn.errors import run_reporting_errors

    run_reporting_errors(lambda args: run_wake_word(config, args), argv, Path(config).stem)


cli = calibrate_checkpoint  # `speechcnn calibrate` (EXTRA_COMMANDS in speechcnn.cli)
