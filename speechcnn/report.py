"""Test-set report: accuracy, keyword accuracy, per-class precision/recall, confusion PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


def _ratio(part: Tensor, whole: Tensor) -> float:
    return part.item() / whole.item() if whole else float("nan")


def classification_report(
    confusion: Tensor, class_names: list[str], keywords: Sequence[str] = ()
) -> dict:
    """Accuracy, per-class precision/recall/support and, when all `keywords` are classes,
    `keyword_accuracy` (over clips of a keyword) of a (K, K) confusion matrix (rows: true class,
    columns: predicted class)."""
    confusion = confusion.detach().cpu().to(torch.float64)
    if confusion.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"confusion is {tuple(confusion.shape)}, expected {len(class_names)} classes"
        )
    correct, support, predicted = confusion.diag(), confusion.sum(1), confusion.sum(0)
    report: dict = {
        "accuracy": _ratio(correct.sum(), support.sum()),
        "num_examples": int(support.sum().item()),
    }
    keyword_ids = [class_names.index(k) for k in keywords if k in class_names]
    if keyword_ids and len(keyword_ids) == len(keywords):
        report["keyword_accuracy"] = _ratio(correct[keyword_ids].sum(), support[keyword_ids].sum())
    report["per_class"] = {
        name: {
            "precision": _ratio(correct[i], predicted[i]),
            "recall": _ratio(correct[i], support[i]),
            "support": int(support[i].item()),
        }
        for i, name in enumerate(class_names)
    }
    return report


def plot_confusion(confusion: Tensor, class_names: list[str], path: str | Path) -> Path:
    """Save a row-normalised confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = confusion.detach().cpu().to(torch.float64)
    rates = counts / counts.sum(1, keepdim=True).clamp(min=1)
    k = len(class_names)
    size = max(5.0, 0.35 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=90)
    ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted", ylabel="true")
    if k <= 15:
        for i, j in counts.nonzero().tolist():
            color = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_title("confusion (row-normalised colour, counts in cells)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_test_report(
    confusion: Tensor,
    class_names: list[str],
    run_dir: str | Path,
    keywords: Sequence[str] = (),
    extra: dict | None = None,
) -> dict:
    """Write metrics.json, report.json (`classification_report`) and confusion.png of a test run
    to `run_dir`; return the metrics (test and `keywords` accuracy, examples, and `extra`)."""
    report = classification_report(confusion, class_names, keywords)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keyword_accuracy = report.get("keyword_accuracy")
    metrics = {
        "test_accuracy": round(report["accuracy"], 4),
        "test_keyword_accuracy": None if keyword_accuracy is None else round(keyword_accuracy, 4),
        "test_examples": report["num_examples"],
        **(extra or {}),
        "run_dir": str(run_dir),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_confusion(confusion, class_names, run_dir / "confusion.png")
    return metrics
