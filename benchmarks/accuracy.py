"""Accuracy per parameter: train named configurations over several seeds, tabulate the results.

    python benchmarks/accuracy.py --data-root ../shared/data/speech_commands_dev

Each configuration is a `+`-joined list of YAML files under recipes/ (without `.yaml`) or of
paths to YAML files, layered in order on the recipe's own config (`recipes/speech_commands.yaml`);
`default` alone is the recipe as it is. Every (configuration, seed) trains in its own process with
`recipes/speech_commands.py` into `<out-dir>/<name>/seed<k>`; a finished run's result.json is
reused while its settings and data folder are unchanged (whatever name it was trained under;
settings are compared with every default filled in), so an interrupted study picks up where it
stopped. A run whose name now means other settings is moved aside (`seed<k>.replaced-<time>`)
and trained again. A run is tested as its configuration's `test_checkpoint` says (the weights
after the last epoch, or the best validation epoch); a finished run tested the other way has
that checkpoint tested without retraining. Prints one JSON line per configuration
(parameters, multiply-accumulates per second of audio, mean and standard deviation of the
12-class testing-split accuracy over the seeds, training minutes) and writes a Markdown table and
a parameters-vs-accuracy plot. With --ensemble it also scores the averaged posteriors of the
finished runs, per configuration (over its seeds) and of all the configurations together: not a
model to ship, but a bound on what choosing among these seeds and settings can reach on the
same testing clips. With --errors it reports, per configuration, how many of its runs got each
testing clip wrong, summed by speaker: the split's 300 clips come from 18 speakers, so a few
speakers weigh on every figure.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from speechcnn.recipe import stacked_config

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"

# The ablation: `study/base` is the recipe default the study started from (frozen, so the study
# still means the same after the default changed), at the study's budget of 12 epochs; the
# next ten rows change one thing from `study/base+study/hop20`; the two long rows take what
# helped to 60 epochs, with and without SpecAugment (the first was the default from the second
# to the fifth session); the sixth session's default adds to it one LSTM layer of 176 instead
# of two of 128, random level and frequency warping; then the small model without and with
# those augmentations, and the presets (the small one: the augmentations with one LSTM layer of
# 88 instead of two of 64), layered on the recipe; last, the recipe itself. Every study row was
# tested at its best validation epoch (study/base and study/small say so); since the seventh
# session the recipe and its presets test the weights after the last epoch. `default7` is the
# default of the sixth and seventh sessions (SIXTH_DEFAULT's runs under the recipe's rule),
# followed by the changes to it tried in the seventh and eighth sessions; the eighth took one of
# them, a 40 ms window (study/win40): `default10` is that default (the eighth to tenth
# sessions'). `eq6+win40` changes it (random equalisation, tried in the eighth and ninth
# sessions; not taken). The last row is the recipe: since the eleventh session, four small
# models in one (study/ens4, tried in the tenth), so `default` is now that layer's runs.
FAST = "study/base+study/hop20"
PREVIOUS_DEFAULT = f"{FAST}+study/cnn3+study/ema+study/long"
SIXTH_DEFAULT = f"{PREVIOUS_DEFAULT}+study/lstm1x176+study/gain+study/vtlp"
# recipes/speech_commands.yaml holds exactly these settings (tests/test_recipes.py).
DEFAULT_FROM = f"{SIXTH_DEFAULT}+study/win40+study/ens4"
STUDY = [
    "study/base",
    FAST,
    f"{FAST}+study/mels64",
    f"{FAST}+study/cnn3",
    f"{FAST}+study/mean_pool",
    f"{FAST}+study/bilstm",
    f"{FAST}+study/ema",
    f"{FAST}+study/mixup",
    f"{FAST}+study/no_specaugment",
    f"{FAST}+study/more_noise",
    f"{FAST}+study/no_smoothing",
    PREVIOUS_DEFAULT,
    f"{FAST}+study/cnn3+study/ema+study/no_specaugment+study/long",
    SIXTH_DEFAULT,
    "study/small",
    "study/small+study/gain+study/vtlp",
    "presets/small",
    "presets/streaming",
    "study/default7",
    "study/ema999",
    "study/masks8",
    "study/lstm1x208",
    "study/eq6",
    "study/default10",
    "study/eq6+study/win40",
    "default",
]


def config_files(config: str) -> list[Path]:
    """The YAML layers of a configuration name (none for `default`)."""
    if config == "default":
        return []
    files = [
        Path(part) if part.endswith(".yaml") else RECIPES / f"{part}.yaml"
        for part in config.split("+")
    ]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"configuration {config!r}: {f} does not exist")
    return files


def merged_config(config: str) -> dict:
    """The recipe's YAML with the configuration's layers merged in, as LightningCLI merges
    repeated --config files (later keys win, nested sections key by key)."""
    return stacked_config([RECIPES / "speech_commands.yaml", *config_files(config)])


# Data-module arguments that do not change what a run learns (where and how clips are read).
NOT_SETTINGS = {"root", "download", "url", "test_url", "cache", "cache_dir", "check", "num_workers"}


def _normal(value: object) -> object:
    """Numbers as floats, tuples as lists, keys sorted: 12 and 12.0 are the same setting."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in sorted(value.items())}
    return str(value)


@functools.cache
def _defaults() -> tuple[dict, dict, dict]:
    """The code's defaults: of the network, of the LightningModule's other arguments and of
    the data module's (read once)."""
    import dataclasses
    import inspect

    from speechcnn.data import SpeechCommandsDataModule
    from speechcnn.model import ClassifierConfig
    from speechcnn.training import SpeechClassifierModule

    def defaults(function: object) -> dict:
        parameters = inspect.signature(function).parameters.values()
        return {p.name: p.default for p in parameters if p.default is not p.empty}

    module = defaults(SpeechClassifierModule.__init__)
    module.pop("net", None)
    data = defaults(SpeechCommandsDataModule.__init__)
    return dataclasses.asdict(ClassifierConfig()), module, data


def effective_settings(config: dict, data_root: Path) -> dict:
    """What a run's result depends on, every default filled in: the model and data settings of
    a (merged or saved) LightningCLI config, the epochs and the data folder. A setting written
    out at its default value and one left out are the same, so pinning a default in a study
    layer (after the recipe's default moved) leaves the layer's finished runs valid."""
    net_defaults, module_defaults, data_defaults = _defaults()
    model = dict(config.get("model") or {})
    data = dict(config.get("data") or {})
    init = data.get("init_args") or {}
    return _normal({
        "net": net_defaults | (model.get("net") or {}),
        "module": module_defaults | {k: v for k, v in model.items() if k in module_defaults},
        "data_class": data.get("class_path"),
        "data": {
            k: v for k, v in (data_defaults | init).items() if k in data_defaults
            and k not in NOT_SETTINGS
        },
        "max_epochs": (config.get("trainer") or {}).get("max_epochs"),
        "data_root": str(data_root.resolve()),
    })  # fmt: skip


def _hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(config: str, data_root: Path) -> str:
    """The fingerprint of a configuration's effective settings on a data folder. A finished run
    is reused only while it matches."""
    return _hash(effective_settings(merged_config(config), data_root))


def saved_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint of the settings a finished run was trained with, from the config.yaml
    LightningCLI saved next to its logs (None if there is none)."""
    saved = sorted(run_dir.glob("lightning_logs/version_*/config.yaml"))
    # keyed by file and time: a folder moved aside, or trained again, is read afresh
    return _saved_fingerprint(saved[-1], saved[-1].stat().st_mtime_ns) if saved else None


@functools.cache
def _saved_fingerprint(config_file: Path, mtime_ns: int) -> str:
    import yaml

    config = yaml.safe_load(config_file.read_text())
    root = Path((config.get("data", {}).get("init_args") or {}).get("root", ""))
    return _hash(effective_settings(config, ROOT / root))


def finished_run(out_dir: Path, run_fingerprint: str, seed: int) -> dict | None:
    """A finished run under `out_dir` with these settings and this seed, whatever name it was
    trained under: a preset that takes in study layers is the run of those layers, and a run
    moved aside when its name changed meaning (`seed<k>.<why>`) still serves its own settings.
    Settings are compared as the run recorded them, else as its saved config.yaml holds them."""
    current = sorted(out_dir.glob(f"*/seed{seed}/result.json"))
    kept = sorted(out_dir.glob(f"*/seed{seed}.*/result.json"))
    for result_file in current + kept:
        result = json.loads(result_file.read_text())
        # the saved config is read only when the recorded fingerprint does not match
        if result.get("fingerprint") == run_fingerprint or (
            saved_fingerprint(result_file.parent) == run_fingerprint
        ):
            return rebased(result, result_file.parent)
    return None


def rebased(result: dict, run_dir: Path) -> dict:
    """The result with its checkpoint paths in `run_dir`, where it lies now (a run moved aside
    recorded the paths it was trained in)."""

    def moved(path: str) -> str:
        return str(run_dir / "checkpoints" / Path(path).name) if path else path

    for record in [result, *result.get("tests", {}).values()]:
        for key in ("best_checkpoint", "tested_checkpoint"):
            if key in record:
                record[key] = moved(record[key])
    return result | {"run_dir": str(run_dir)}


def row_name(config: str) -> str:
    """Table name: the layers' file names after study/base (`base` alone, `default` for the
    recipe itself), a preset's marked as such (`small preset`)."""
    names = [
        Path(part).name.removesuffix(".yaml") + (" preset" if part.startswith("presets/") else "")
        for part in config.split("+")
    ]
    return "+".join(names[1:] if names[0] == "base" and len(names) > 1 else names)


def run_one(config: str, seed: int, args: argparse.Namespace) -> dict:
    """Train and test one configuration with one seed (reusing a finished run)."""
    run_dir = (
        args.out_dir
        / "+".join(str(Path(p).with_suffix("")).replace("/", "_") for p in config.split("+"))
        / f"seed{seed}"
    )
    result_file = run_dir / "result.json"
    run_fingerprint = fingerprint(config, args.data_root)
    if not args.force:
        if (result := finished_run(args.out_dir, run_fingerprint, seed)) is not None:
            # this name's own run, or the same settings under another name
            return tested_as(result, config, args.data_root)
        if result_file.is_file():
            # kept, not deleted: the run of the settings this name used to mean
            kept = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            print(f"# {config} seed {seed}: configuration changed, retraining (the old run is "
                  f"kept in {kept})", file=sys.stderr)  # fmt: skip
            run_dir.rename(kept)
        if (metrics := unrecorded_metrics(run_dir, run_fingerprint)) is not None:
            # trained to the end, but the benchmark stopped before it wrote the result down
            print(f"# {config} seed {seed}: recorded from its finished training log",
                  file=sys.stderr)  # fmt: skip
            return record(metrics, config, seed, run_fingerprint, run_dir, args, None)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(RECIPES / "speech_commands.py")]
    for f in config_files(config):
        command += ["--config", str(f)]
    command += [
        "--seed_everything", str(seed),
        "--data.root", str(args.data_root),
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    with open(run_dir / "train.log", "a") as log:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        log.write(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{config} seed {seed} failed (exit {done.returncode}): {run_dir}/train.log"
        )
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    wall_minutes = round((time.perf_counter() - start) / 60, 2)
    return record(metrics, config, seed, run_fingerprint, run_dir, args, wall_minutes)


def unrecorded_metrics(run_dir: Path, run_fingerprint: str) -> dict | None:
    """The recipe's metrics line of a run in `run_dir` that trained and tested to the end with
    these settings but has no result.json (the benchmark was stopped or failed in between), so
    that it is recorded, not trained again; None for anything else."""
    log = run_dir / "train.log"
    if (run_dir / "result.json").is_file() or not log.is_file():
        return None
    lines = log.read_text(errors="replace").strip().splitlines()
    try:
        metrics = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None  # the last training did not finish
    if not isinstance(metrics, dict) or "test_accuracy" not in metrics:
        return None
    # the checkpoints as they lie in run_dir (the folder may have moved since it trained)
    checkpoints = {
        key: str(run_dir / "checkpoints" / Path(metrics.get(key) or "missing").name)
        for key in ("best_checkpoint", "tested_checkpoint")
    }
    if not all(Path(c).is_file() for c in checkpoints.values()):
        return None
    metrics |= checkpoints
    return metrics if saved_fingerprint(run_dir) == run_fingerprint else None


def record(
    metrics: dict,
    config: str,
    seed: int,
    run_fingerprint: str,
    run_dir: Path,
    args: argparse.Namespace,
    wall_minutes: float | None,
) -> dict:
    """Write a run's result.json from the recipe's metrics line, and return it as tested."""
    result = {
        "config": config,
        "fingerprint": run_fingerprint,
        "seed": seed,
        "test_accuracy": metrics["test_accuracy"],
        "test_keyword_accuracy": metrics["test_keyword_accuracy"],
        "test_examples": metrics["test_examples"],
        "parameters": metrics["parameters"],
        "macs_per_second": macs_of(metrics["best_checkpoint"]),
        "epochs": metrics["epochs"],
        "train_minutes": round(metrics["train_seconds"] / 60, 2),
        "wall_minutes": wall_minutes,
        "threads": args.threads,
        "best_checkpoint": metrics["best_checkpoint"],
        "test_checkpoint": metrics["test_checkpoint"],
        "tested_checkpoint": metrics["tested_checkpoint"],
        "tests": {
            metrics["test_checkpoint"]: {
                "test_accuracy": metrics["test_accuracy"],
                "test_keyword_accuracy": metrics["test_keyword_accuracy"],
                "tested_checkpoint": metrics["tested_checkpoint"],
            }
        },
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"# {config} seed {seed}: {result['test_accuracy']:.4f}", file=sys.stderr, flush=True)
    return tested_as(result | {"run_dir": str(run_dir)}, config, args.data_root)


def test_rule(config: str) -> str:
    """Which checkpoint the configuration's recipe tests: `last` (the weights after the last
    epoch, the code's default) or `best` (the best validation epoch)."""
    return merged_config(config).get("test_checkpoint", "last")


def final_checkpoint(result: dict) -> str | None:
    """The run's last.ckpt if it holds the weights after its last epoch (runs before the sixth
    session kept there a copy of the best epoch instead), else None."""
    from speechcnn.checkpoints import CheckpointFileError, load_checkpoint

    path = Path(result["best_checkpoint"]).with_name("last.ckpt")
    try:
        state = load_checkpoint(path)
    except CheckpointFileError:
        return None
    return str(path) if state["epoch"] + 1 == result["epochs"] else None


def tested_as(result: dict, config: str, data_root: Path) -> dict:
    """The run's result with its testing-split figures for the checkpoint the configuration's
    `test_checkpoint` picks.

    A run keeps one test per rule in its result.json (`tests`); one that was tested under the
    other rule (every run before the seventh session was tested at its best validation epoch)
    has its checkpoint tested now and the figures added, so no retraining is needed. A run with
    no final-epoch checkpoint keeps its best-epoch figures, and says so (`test_checkpoint`).
    """
    rule = test_rule(config)
    tests = result.setdefault("tests", {})
    if not tests:  # written before the seventh session: tested at the best epoch
        tests[result.get("test_checkpoint", "best")] = {
            "test_accuracy": result["test_accuracy"],
            "test_keyword_accuracy": result["test_keyword_accuracy"],
            "tested_checkpoint": result.get("tested_checkpoint", result["best_checkpoint"]),
        }
    if rule not in tests:
        checkpoint = result["best_checkpoint"] if rule == "best" else final_checkpoint(result)
        if checkpoint is None:
            print(f"# {result['config']} seed {result['seed']}: no checkpoint after the last "
                  "epoch (trained before the sixth session), reporting its best epoch",
                  file=sys.stderr)  # fmt: skip
            rule = next(iter(tests))
        else:
            tests[rule] = test_checkpoint(checkpoint, config, data_root)
            saved = {k: v for k, v in result.items() if k != "run_dir"}
            (Path(result["run_dir"]) / "result.json").write_text(json.dumps(saved, indent=2) + "\n")
    return result | tests[rule] | {"test_checkpoint": rule}


def test_checkpoint(checkpoint: str, config: str, data_root: Path) -> dict:
    """Testing-split accuracy and keyword accuracy of one checkpoint, as the recipe tests."""
    import torch

    from speechcnn.classify import batched_logits, load_classifier
    from speechcnn.report import classification_report

    clips = testing_clips(config, data_root)
    loaded = load_classifier(checkpoint)
    with torch.inference_mode():
        predicted = batched_logits(loaded.model, clips.waveforms, clips.lengths).argmax(-1)
    k = len(loaded.class_names)
    # (N,) pairs -> (K, K) counts, rows the true class as torchmetrics' confusion matrix
    confusion = torch.bincount(clips.labels * k + predicted, minlength=k * k).view(k, k)
    report = classification_report(confusion, loaded.class_names)
    return {
        "test_accuracy": round(report["accuracy"], 4),
        "test_keyword_accuracy": round(report["keyword_accuracy"], 4)
        if "keyword_accuracy" in report
        else None,
        "tested_checkpoint": checkpoint,
    }


@functools.cache
def testing_clips(config: str, data_root: Path) -> object:
    """The testing split as the configuration's recipe builds it from `data_root`."""
    from speechcnn.data.speech_commands import SpeechCommandsDataModule

    settings = merged_config(config).get("data", {}).get("init_args", {})
    settings = {k: v for k, v in settings.items() if k not in ("root", "download")}
    data = SpeechCommandsDataModule(root=str(data_root), download=False, **settings)
    data.setup("test")
    return data.clips["test"]


def macs_of(checkpoint: str) -> int:
    from speechcnn.classify import load_classifier
    from speechcnn.model import multiply_accumulates

    return multiply_accumulates(load_classifier(checkpoint).model, seconds=1.0)


def val_accuracy(checkpoint: str) -> float | None:
    """The validation accuracy (470 clips in the 12-class task) of a run's checkpoint: what the
    run logged for the checkpoint's epoch (metrics.csv), else the best score its ModelCheckpoint
    kept."""
    import csv

    from speechcnn.checkpoints import CheckpointFileError, load_checkpoint

    try:
        state = load_checkpoint(checkpoint)
    except CheckpointFileError:
        return None
    logged = None
    for path in sorted(Path(checkpoint).parent.parent.glob("lightning_logs/version_*/metrics.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("val/acc") and int(row["epoch"]) == state["epoch"]:
                    logged = float(row["val/acc"])
    if logged is not None:
        return round(logged, 4)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_score") is not None:
            return round(float(value["best_model_score"]), 4)
    return None


def summarise(config: str, runs: list[dict]) -> dict:
    accuracies = [r["test_accuracy"] for r in runs]
    keyword = [r["test_keyword_accuracy"] for r in runs]
    # Validation accuracy of the tested checkpoints (470 clips): a second look at the same
    # runs, which single-seed rows need (a best-epoch checkpoint was picked on it).
    vals = [v for r in runs if (v := val_accuracy(r["tested_checkpoint"])) is not None]
    return {
        "name": row_name(config),
        "config": config,
        "seeds": [r["seed"] for r in runs],
        "parameters": runs[0]["parameters"],
        "macs_per_second": runs[0]["macs_per_second"],
        "accuracy_mean": round(statistics.mean(accuracies), 4),
        "accuracy_std": round(statistics.stdev(accuracies), 4) if len(runs) > 1 else 0.0,
        "accuracies": accuracies,
        "keyword_accuracy_mean": round(statistics.mean(keyword), 4),
        "val_accuracy_mean": round(statistics.mean(vals), 4) if vals else None,
        "test_examples": runs[0]["test_examples"],
        "epochs": runs[0]["epochs"],
        "train_minutes_mean": round(statistics.mean(r["train_minutes"] for r in runs), 2),
        "threads": runs[0]["threads"],
        # "last" or "best" (a run trained before the sixth session has no final-epoch weights)
        "tested": "+".join(sorted({r["test_checkpoint"] for r in runs})),
    }


@functools.cache
def testing_logits(checkpoint: str, config: str, data_root: Path) -> object:
    """(N, K) logits of a checkpoint on the testing split as `config`'s recipe builds it, kept
    for the run: --ensemble and --errors both read them."""
    import torch

    from speechcnn.classify import batched_logits, load_classifier

    clips = testing_clips(config, data_root)
    with torch.inference_mode():
        return batched_logits(load_classifier(checkpoint).model, clips.waveforms, clips.lengths)


def ensemble_accuracy(runs: dict[str, list[dict]], data_root: Path) -> dict:
    """Testing-split accuracy of the mean posterior of each configuration's runs, and of all."""
    import torch

    first = next(iter(runs))
    clips = testing_clips(first, data_root)
    mean_posteriors = {}
    for config, config_runs in runs.items():
        posteriors = [
            testing_logits(run["tested_checkpoint"], first, data_root).softmax(-1)  # (N, K)
            for run in config_runs
        ]
        mean_posteriors[config] = torch.stack(posteriors).mean(0)  # (N, K)

    def accuracy(posteriors: torch.Tensor) -> float:
        return round(float((posteriors.argmax(-1) == clips.labels).float().mean()), 4)

    return {
        "ensemble_members": sum(len(r) for r in runs.values()),
        "ensemble_accuracy": accuracy(torch.stack(list(mean_posteriors.values())).mean(0)),
        "ensemble_by_configuration": {row_name(c): accuracy(p) for c, p in mean_posteriors.items()},
        "test_examples": len(clips),
    }


def speaker_of(path: str) -> str:
    """The speaker id of a Speech Commands clip (its name before `_nohash_`); silence clips,
    cut from background noise, have none."""
    name = Path(path).name
    return name.split("_nohash_")[0] if "_nohash_" in name else "(no speaker)"


def summarise_errors(
    wrong: list[int], paths: list[str], n_runs: int, top: int = 5
) -> dict[str, object]:
    """Where a configuration's runs err, from how many of its `n_runs` runs got each clip
    wrong: clips by that count, the speakers with the most errors (with their share of the clips
    and of the errors), and the clips every run got wrong."""
    per_speaker: dict[str, list[int]] = {}
    for path, count in zip(paths, wrong, strict=True):
        clips_errors = per_speaker.setdefault(speaker_of(path), [0, 0])
        clips_errors[0] += 1
        clips_errors[1] += count
    errors = sum(wrong)
    ranked = sorted(per_speaker.items(), key=lambda item: (-item[1][1], item[0]))[:top]
    return {
        "runs": n_runs,
        "clips": len(wrong),
        "errors": errors,
        "clips_wrong_in_k_runs": {k: wrong.count(k) for k in range(n_runs + 1)},
        "speakers": len(per_speaker),
        "top_speakers": [
            {
                "speaker": speaker,
                "clips": clips,
                "errors": speaker_errors,
                "share_of_clips": round(clips / len(wrong), 3),
                "share_of_errors": round(speaker_errors / errors, 3) if errors else 0.0,
            }
            for speaker, (clips, speaker_errors) in ranked
        ],
        "wrong_in_every_run": [
            "/".join(Path(p).parts[-2:]) for p, k in zip(paths, wrong, strict=True) if k == n_runs
        ],
    }


def error_report(runs: dict[str, list[dict]], data_root: Path) -> dict[str, dict]:
    """`summarise_errors` of each configuration's runs on the testing split."""
    first = next(iter(runs))
    clips = testing_clips(first, data_root)
    report = {}
    for config, config_runs in runs.items():
        wrong = sum(
            (
                testing_logits(run["tested_checkpoint"], first, data_root).argmax(-1)
                != clips.labels
            ).long()
            for run in config_runs
        )  # (N,) runs that got each clip wrong
        report[row_name(config)] = summarise_errors(wrong.tolist(), clips.paths, len(config_runs))
    return report


# The table's name for what was tested.
TESTED = {"last": "last epoch", "best": "best val. epoch", "best+last": "mixed"}


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| configuration | parameters | MMACs per s of audio | accuracy (mean ± std) "
        "| keywords | val. | tested | epochs | train min/seed |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        marks = {
            SIXTH_DEFAULT: " (default of sessions 6-7)",
            PREVIOUS_DEFAULT: " (default until session 5)",
            "study/default7": " (sessions 6-7)",
            "study/default10": " (sessions 8-10)",
            "default": " (recipe)",
        }
        name = r["name"] + marks.get(r["config"], "")
        if len(r["seeds"]) > 1:
            accuracy = f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
        else:
            accuracy = f"{100 * r['accuracy_mean']:.2f} (seed {r['seeds'][0]} only)"
        val = r.get("val_accuracy_mean")
        lines.append(
            f"| {name} | {r['parameters']:,} | {r['macs_per_second'] / 1e6:.1f} | {accuracy} "
            f"| {100 * r['keyword_accuracy_mean']:.2f} "
            f"| {'-' if val is None else f'{100 * val:.2f}'} | {TESTED[r['tested']]} "
            f"| {r['epochs']} "
            f"| {r['train_minutes_mean']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        ax.errorbar(
            r["parameters"] / 1e3,
            100 * r["accuracy_mean"],
            yerr=100 * r["accuracy_std"],
            fmt="o",
            capsize=3,
        )
        ax.annotate(r["name"], (r["parameters"] / 1e3, 100 * r["accuracy_mean"]), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("parameters (thousands)")
    ax.set_ylabel("12-class testing-split accuracy (%), mean ± std over seeds")
    ax.set_title("speechcnn on speech_commands_dev")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=STUDY, help="configurations (see above)")
    parser.add_argument(
        "--data-root", type=Path, default=Path("../shared/data/speech_commands_dev")
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                        help="torch threads per run")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=Path("runs/accuracy"))
    parser.add_argument("--table", type=Path, help="write the Markdown table here")
    parser.add_argument("--plot", type=Path, help="write the parameters-vs-accuracy PNG here")
    parser.add_argument("--force", action="store_true", help="retrain finished runs")
    parser.add_argument(
        "--ensemble", action="store_true", help="also score the runs' averaged posteriors"
    )
    parser.add_argument(
        "--errors",
        action="store_true",
        help="also report where the runs err: clips by how many runs got them wrong, by speaker",
    )
    args = parser.parse_args(argv)
    if not args.data_root.is_dir():
        parser.error(f"--data-root {args.data_root} is not a folder")
    if args.jobs < 1 or args.threads < 1:
        parser.error(f"--jobs and --threads must be positive, got {args.jobs}, {args.threads}")
    for config in args.configs:
        config_files(config)  # fail before training anything

    tasks = [(c, s) for c in args.configs for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda task: run_one(*task, args), tasks))
    # by task, not by the result's own "config": a reused run may carry another name
    runs = {
        config: [r for (c, _), r in zip(tasks, results, strict=True) if c == config]
        for config in args.configs
    }
    rows = []
    for config in args.configs:
        row = summarise(config, runs[config])
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = markdown_table(rows)
    print(table)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table)
    if args.plot:
        plot(rows, args.plot)
    if args.ensemble:
        print(json.dumps(ensemble_accuracy(runs, args.data_root)), flush=True)
    if args.errors:
        for name, errors in error_report(runs, args.data_root).items():
            print(json.dumps({"errors_of": name} | errors), flush=True)
    return rows


if __name__ == "__main__":
    main()
