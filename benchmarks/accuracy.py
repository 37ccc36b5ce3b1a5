"""Accuracy per parameter: train configurations over several seeds and tabulate the results.

    python benchmarks/accuracy.py recipes/presets/small.yaml --seeds 0 1 2 \
        --data-root ../shared/data/speech_commands_dev

Each configuration is a YAML file layered on the recipe's own (recipes/speech_commands.yaml,
as `--config` layers it); `recipe` names the recipe alone, and is the default. Every
(configuration, seed) trains in its own process with recipes/speech_commands.py into
`<out-dir>/<name>/seed<k>`. A finished run's result.json is reused while the configuration's
merged settings, the seed and the data folder are unchanged; a run of other settings is
trained again into a new folder, and nothing is deleted. Prints one JSON line per configuration
(parameters, multiply-accumulates per second of audio, mean and standard deviation of the
12-class testing-split accuracy over the seeds, validation accuracy, training minutes), a
Markdown table and, with --plot, a parameters-vs-accuracy plot.

With --folds K the figure is speaker-disjoint cross-validation instead: every speaker of the
data folder (its training, validation and testing clips alike) goes to one of K folds of about
equal clip counts; fold k is tested on (its clips, with unknown words and silence built as the
recipe builds them) after training on the other K - 1, of which a speaker-disjoint sixth of
the clips is the validation split the recipe needs. The split lists of each fold are written
to `<out-dir>/folds/`, and the runs are told them with `--data.split_lists`. Each
configuration's line then gives the mean accuracy over folds (and seeds) and its standard
error (the standard deviation over folds / sqrt(K)).

`--recipe free_spoken_digits` layers the configurations on recipes/free_spoken_digits.yaml
instead; its folds deal FSDD's speakers out (five speakers, `--folds 5`: each tested once,
never heard in training, with the recipe's `speakers` split). `--epochs N` trains every run
N epochs instead of its configuration's: a cheaper screening of options, in its own run folders.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from speechcnn.recipe import stacked_config

if TYPE_CHECKING:
    from torch import Tensor

    from speechcnn.model import SpeechClassifier

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "speech_commands.yaml"
# the recipes cross-validation knows the speakers of, and their data folders beside ../shared
RECIPES = {
    "speech_commands": RECIPE,
    "free_spoken_digits": RECIPE.with_name("free_spoken_digits.yaml"),
}
DATA_ROOTS = {
    "speech_commands": Path("../shared/data/speech_commands_dev"),
    "free_spoken_digits": Path("../shared/data/fsdd/recordings"),
}
SILENCE = Path("../shared/data/official_silence")  # beside --data-root's default


def config_file(config: str) -> Path | None:
    """The YAML file of a configuration (None for `recipe`)."""
    if config == "recipe":
        return None
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"configuration {config}: no such YAML file")
    return path


def merged_config(config: str, recipe: Path = RECIPE) -> dict:
    """The recipe's YAML with the configuration merged in (later keys win, sections merge)."""
    layer = config_file(config)
    return stacked_config([recipe] + ([layer] if layer else []))


def fingerprint(
    config: str,
    seed: int,
    data_root: Path,
    fold: Path | None = None,
    recipe: Path = RECIPE,
    epochs: int | None = None,
) -> str:
    """What a run's result depends on: the merged settings (with `epochs` in place of the
    configuration's, when given), the seed, the data folder and, in cross-validation, the
    fold's lists."""
    settings = merged_config(config, recipe)
    if epochs is not None:
        settings["trainer"]["max_epochs"] = epochs
    settings["data"]["init_args"].pop("root", None)
    # a data argument set to null is that argument's default: the same run as leaving it out
    data = settings["data"]["init_args"]
    settings["data"]["init_args"] = {k: v for k, v in data.items() if v is not None}
    lists = [] if fold is None else [(fold / n).read_text() for n in sorted(os.listdir(fold))]
    key = json.dumps([settings, seed, str(data_root.resolve()), lists], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def speaker_of(relative_path: str) -> str:
    """The speaker of a Speech Commands clip: its file name up to `_nohash_`."""
    return Path(relative_path).name.split("_nohash_")[0]


def speaker_folds(data_root: Path, folds: int, out_dir: Path, seed: int = 0) -> list[Path]:
    """Write speaker-disjoint split lists for `folds` folds; returns each fold's folder.

    Fold k's testing_list.txt holds every clip of its speakers; its validation_list.txt the
    clips of speakers from the other folds that make up about a sixth of their clips (the
    rest is training, as every clip in no list is).
    """
    clips: dict[str, list[str]] = {}
    for folder in sorted(p for p in data_root.iterdir() if p.is_dir()):
        if folder.name.startswith("_"):
            continue  # _background_noise_: no speaker
        for wav in sorted(folder.glob("*.wav")):
            rel = f"{folder.name}/{wav.name}"
            clips.setdefault(speaker_of(rel), []).append(rel)
    speakers = sorted(clips)
    if len(speakers) < folds:
        raise ValueError(f"{data_root}: {len(speakers)} speakers cannot make {folds} folds")
    order = np.random.default_rng(seed).permutation(len(speakers))
    # largest first, each to the fold with the fewest clips: folds of about equal size
    ranked = sorted((speakers[i] for i in order), key=lambda s: -len(clips[s]))
    members: list[list[str]] = [[] for _ in range(folds)]
    for speaker in ranked:
        smallest = min(range(folds), key=lambda k: sum(len(clips[s]) for s in members[k]))
        members[smallest].append(speaker)
    paths = []
    for k in range(folds):
        rest = [speakers[i] for i in order if speakers[i] not in members[k]]
        target = sum(len(clips[s]) for s in rest) / 6
        val, size = [], 0
        for speaker in rest:
            if size >= target:
                break
            val.append(speaker)
            size += len(clips[speaker])
        fold_dir = out_dir / f"k{folds}-seed{seed}" / f"fold{k}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        for name, group in (("testing_list.txt", members[k]), ("validation_list.txt", val)):
            lines = sorted(rel for s in group for rel in clips[s])
            (fold_dir / name).write_text("\n".join(lines) + "\n")
        paths.append(fold_dir)
    return paths


def digit_speaker_folds(data_root: Path, folds: int, out_dir: Path) -> list[Path]:
    """FSDD's speakers (file names `{digit}_{speaker}_{take}.wav`) dealt into `folds` folds;
    fold k's folder holds test_speakers.txt. The recipe's `speakers` split validates on the
    other speakers' first takes."""
    speakers = sorted({p.stem.split("_")[1] for p in data_root.glob("*_*_*.wav")})
    if len(speakers) < folds:
        raise ValueError(f"{data_root}: {len(speakers)} speakers cannot make {folds} folds")
    paths = []
    for k in range(folds):
        fold_dir = out_dir / f"speakers{folds}" / f"fold{k}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        (fold_dir / "test_speakers.txt").write_text("\n".join(speakers[k::folds]) + "\n")
        paths.append(fold_dir)
    return paths


def row_name(config: str) -> str:
    return "recipe" if config == "recipe" else Path(config).stem


def run_one(config: str, seed: int, fold: Path | None, args: argparse.Namespace) -> dict:
    """Train and test one configuration with one seed (on one fold's split lists, in
    cross-validation), or read back its finished run."""
    stamp = fingerprint(config, seed, args.data_root, fold, RECIPES[args.recipe], args.epochs)
    where = "" if fold is None else f"{fold.parent.name}-{fold.name}-"
    run_dir = args.out_dir / row_name(config) / f"{where}seed{seed}-{stamp}"
    result_file = run_dir / "result.json"
    if result_file.is_file() and not args.force:
        result = json.loads(result_file.read_text())
        if args.silence_dir and "silence_recall" not in result:
            result["silence_recall"] = silence_recall(result["tested_checkpoint"], args.silence_dir)
            result_file.write_text(json.dumps(result, indent=2) + "\n")
        return result
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(RECIPES[args.recipe].with_suffix(".py"))]
    if (layer := config_file(config)) is not None:
        command += ["--config", str(layer)]
    command += [
        "--seed_everything", str(seed),
        "--data.root", str(args.data_root),
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    if args.epochs is not None:
        command += ["--trainer.max_epochs", str(args.epochs)]
    if fold is not None and (fold / "test_speakers.txt").is_file():
        speakers = (fold / "test_speakers.txt").read_text().split()
        command += ["--data.split", "speakers", "--data.test_speakers", json.dumps(speakers)]
    elif fold is not None:
        command += ["--data.split_lists", str(fold)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    with open(run_dir / "train.log", "a") as log:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        log.write(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(f"{config} seed {seed} failed (exit {done.returncode}): {log.name}")
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    result = {
        "config": config,
        "seed": seed,
        "fold": None if fold is None else fold.name,
        "fingerprint": stamp,
        "threads": args.threads,
        "wall_minutes": round((time.perf_counter() - start) / 60, 2),
        "train_minutes": round(metrics["train_seconds"] / 60, 2),
        "macs_per_second": macs_of(metrics["tested_checkpoint"]),
        "val_accuracy": val_accuracy(metrics["tested_checkpoint"]),
        **metrics,
    }
    if args.silence_dir:
        result["silence_recall"] = silence_recall(metrics["tested_checkpoint"], args.silence_dir)
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def macs_of(checkpoint: str) -> int:
    from speechcnn.classify import load_classifier

    return multiply_accumulates(load_classifier(checkpoint).model, seconds=1.0)


def multiply_accumulates(model: SpeechClassifier, seconds: float = 1.0) -> int:
    """Multiply-accumulates to classify `seconds` of audio, counted layer by layer.

    Counts the features (the FFT as 2 N log2 N real MACs per frame of N samples, the mel
    filterbank and any DCT), the convolutions, the LSTM's gate products, the attention score
    and the classifier. Batch norm, activations and pooling are left out: they are elementwise
    (batch norm folds into the convolution at inference).
    """
    import torch
    from torch import nn

    feats = model.features
    num_samples = round(seconds * feats.sample_rate)
    n_frames = feats.num_frames(num_samples)
    if n_frames <= 0:
        raise ValueError(f"{seconds} s is shorter than one analysis window")
    n_fft = feats.n_fft
    macs = n_frames * (2 * n_fft * math.ceil(math.log2(n_fft)))  # FFT
    macs += n_frames * feats.mel_fbanks.numel()  # (N/2+1, n_mels) projection
    if feats.dct is not None:
        macs += n_frames * feats.dct.numel()

    counts: list[int] = []

    def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        else:
            per_output = module.in_features
        counts.append(output[0].numel() * per_output)  # first item of the batch

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    hooks = [m.register_forward_hook(count) for m in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, num_samples))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    # The classifier runs on the pooled vector once per clip; the hook saw exactly that.
    macs += sum(counts)
    lstm = model.head.lstm
    dirs = 2 if lstm.bidirectional else 1
    size = lstm.input_size
    for _ in range(lstm.num_layers):
        macs += n_frames * dirs * 4 * lstm.hidden_size * (size + lstm.hidden_size)
        size = lstm.hidden_size * dirs
    return int(macs)


def silence_recall(checkpoint: str, folder: Path) -> float:
    """The share of `folder`'s clips (real silence, e.g. ../shared/data/official_silence) that
    a checkpoint classifies as `_silence_`."""
    import torch

    from speechcnn.classify import load_classifier
    from speechcnn.data.audio import fit_length, read_audio

    loaded = load_classifier(checkpoint)
    model = loaded.model.eval()
    files = sorted(Path(folder).rglob("*.wav"))
    clips = [fit_length(read_audio(f, loaded.sample_rate), loaded.sample_rate) for f in files]
    with torch.no_grad():
        predicted = model(torch.from_numpy(np.stack(clips)).float()).argmax(dim=1)
    return round(float((predicted == loaded.class_names.index("_silence_")).float().mean()), 4)


def val_accuracy(checkpoint: str) -> float | None:
    """The validation accuracy logged with a checkpoint's epoch, where Lightning kept it."""
    from speechcnn.checkpoints import CheckpointFileError, load_checkpoint

    try:
        saved = load_checkpoint(checkpoint)
    except CheckpointFileError:
        return None
    callbacks = saved.get("callbacks", {})
    for state in callbacks.values():
        score = state.get("current_score") if isinstance(state, dict) else None
        if score is not None and state.get("monitor") == "val/acc":
            return round(float(score), 4)
    return None


def summarise(config: str, runs: list[dict], folds: int | None = None) -> dict:
    accuracies = [r["test_accuracy"] for r in runs]
    vals = [r["val_accuracy"] for r in runs if r.get("val_accuracy") is not None]
    row = {
        "name": row_name(config),
        "config": config,
        "seeds": sorted({r["seed"] for r in runs}),
        "parameters": runs[0]["parameters"],
        "macs_per_second": runs[0]["macs_per_second"],
        "accuracy_mean": round(statistics.mean(accuracies), 4),
        "accuracy_std": round(statistics.stdev(accuracies), 4) if len(runs) > 1 else 0.0,
        "accuracies": accuracies,
        "keyword_accuracy_mean": (
            round(statistics.mean(r["test_keyword_accuracy"] for r in runs), 4)
            if all(r.get("test_keyword_accuracy") is not None for r in runs)
            else None  # a data set without keyword classes
        ),
        "val_accuracy_mean": round(statistics.mean(vals), 4) if vals else None,
        "test_examples": runs[0]["test_examples"],
        "epochs": runs[0]["epochs"],
        "train_minutes_mean": round(statistics.mean(r["train_minutes"] for r in runs), 2),
        "silence_recall_mean": (
            round(statistics.mean(r["silence_recall"] for r in runs), 4)
            if all("silence_recall" in r for r in runs)
            else None
        ),
        "threads": runs[0]["threads"],
    }
    if folds:
        # each fold's accuracy (its seeds averaged), then their spread over folds
        per_fold = [
            statistics.mean(r["test_accuracy"] for r in runs if r["fold"] == f"fold{k}")
            for k in range(folds)
        ]
        row["folds"] = folds
        row["fold_accuracies"] = [round(a, 4) for a in per_fold]
        row["accuracy_mean"] = round(statistics.mean(per_fold), 4)
        row["accuracy_stderr"] = round(statistics.stdev(per_fold) / folds**0.5, 4)
    return row


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| configuration | parameters | MMACs per s of audio | test acc. (mean ± std) "
        "| keywords | validation | official_silence recall | epochs | train min/seed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if rows and "folds" in rows[0]:
        lines[0] = lines[0].replace(
            "test acc. (mean ± std)", f"{rows[0]['folds']}-fold CV (± s.e.)"
        )
    for r in rows:
        if "folds" in r:
            accuracy = f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_stderr']:.2f}"
        elif len(r["seeds"]) > 1:
            accuracy = f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
        else:
            accuracy = f"{100 * r['accuracy_mean']:.2f} (seed {r['seeds'][0]} only)"
        val, silence = r["val_accuracy_mean"], r["silence_recall_mean"]
        keywords = (
            "-" if r["keyword_accuracy_mean"] is None else f"{100 * r['keyword_accuracy_mean']:.2f}"
        )
        lines.append(
            f"| {r['name']} | {r['parameters']:,} | {r['macs_per_second'] / 1e6:.1f} | {accuracy} "
            f"| {keywords} "
            f"| {'-' if val is None else f'{100 * val:.2f}'} "
            f"| {'-' if silence is None else f'{100 * silence:.1f}'} | {r['epochs']} "
            f"| {r['train_minutes_mean']:.1f} |"
        )
    if any("official_accuracy_mean" in r for r in rows):  # --official: one more column
        lines[0] += " testing split |"
        lines[1] += "---:|"
        for i, r in enumerate(rows, start=2):
            official = r.get("official_accuracy_mean")
            lines[i] += f" {'-' if official is None else f'{100 * official:.2f}'} |"
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        x, y = r["parameters"] / 1e3, 100 * r["accuracy_mean"]
        ax.errorbar(x, y, yerr=100 * r["accuracy_std"], fmt="o", capsize=3)
        ax.annotate(r["name"], (x, y), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("parameters (thousands)")
    ax.set_ylabel("12-class testing-split accuracy (%), mean ± std over seeds")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "configs", nargs="*", default=["recipe"], help="YAML files, or `recipe` (default)"
    )
    parser.add_argument(
        "--recipe", choices=sorted(RECIPES), default="speech_commands",
        help="the recipe configurations layer on (default speech_commands)",
    )  # fmt: skip
    parser.add_argument(
        "--data-root", type=Path, help="default: the recipe's folder in ../shared/data"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                        help="torch threads per run (default: half the cores)")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=Path("runs/accuracy"))
    parser.add_argument("--table", type=Path, help="write the Markdown table here")
    parser.add_argument("--plot", type=Path, help="write the parameters-vs-accuracy PNG here")
    parser.add_argument("--force", action="store_true", help="retrain finished runs")
    parser.add_argument(
        "--folds", type=int, help="speaker-disjoint cross-validation with this many folds"
    )
    parser.add_argument(
        "--official", action="store_true",
        help="with --folds: also train on the recipe's own split and report its testing accuracy",
    )  # fmt: skip
    parser.add_argument(
        "--epochs", type=int, help="train this many epochs, not the configuration's (screening)"
    )
    parser.add_argument("--silence-dir", type=Path, default=SILENCE if SILENCE.is_dir() else None,
                        help="real silence clips to measure _silence_ recall on (default: "
                        "../shared/data/official_silence, when it exists)")  # fmt: skip
    args = parser.parse_args(argv)
    args.data_root = args.data_root or DATA_ROOTS[args.recipe]
    if args.recipe != "speech_commands":
        args.silence_dir = None  # no _silence_ class
    if not args.data_root.is_dir():
        parser.error(f"--data-root {args.data_root} is not a folder")
    if args.jobs < 1 or args.threads < 1:
        parser.error(f"--jobs and --threads must be positive, got {args.jobs}, {args.threads}")
    for config in args.configs:
        try:
            config_file(config)  # fail before training anything
        except FileNotFoundError as error:
            parser.error(str(error))

    if args.silence_dir is not None and not args.silence_dir.is_dir():
        parser.error(f"--silence-dir {args.silence_dir} is not a folder")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.folds is not None and args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}")
    folds: list[Path | None] = [None]
    if args.folds:
        make = speaker_folds if args.recipe == "speech_commands" else digit_speaker_folds
        folds = list(make(args.data_root, args.folds, args.out_dir / "folds"))
    if args.folds and args.official:
        folds.append(None)  # the recipe's own split too, reported beside the folds
    tasks = [(c, s, f) for c in args.configs for f in folds for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda task: run_one(*task, args), tasks))
    rows = []
    for config in args.configs:
        runs = [r for (c, _, _), r in zip(tasks, results, strict=True) if c == config]
        official = [r for r in runs if args.folds and r["fold"] is None]
        folded = [r for r in runs if not official or r["fold"] is not None]
        rows.append(summarise(config, folded, args.folds))
        if official:
            accuracy = statistics.mean(r["test_accuracy"] for r in official)
            rows[-1]["official_accuracy_mean"] = round(accuracy, 4)
        print(json.dumps(rows[-1]), flush=True)
    table = markdown_table(rows)
    print(table)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table)
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
