"""Keyword spotting on long streams built from real Speech Commands clips.

A stream is the clips of one split (validation_list.txt or testing_list.txt: the 10 keywords
and the other words, which must not trigger) in random order, with gaps of 1-5 s of
`_background_noise_` between them (a random recording, offset and gain), so the time of every
word is known. Both streams are written to runs/spotting/ (never committed).

The threshold is chosen on the validation stream (the lowest threshold whose false alarms per
hour stay at or under --max-fa-per-hour, i.e. the most detections within that budget) and
reported on the testing stream. A detection is a hit when its keyword is the clip's word and
its span (the window it was found in) holds the centre of the spoken word, located in the clip
by its energy (`word_centre`: a 1 s clip is mostly silence around a shorter word); every other
detection (wrong word, an unknown word, noise, a second detection of a clip) is a false alarm.

Run:
    python benchmarks/spotting.py runs/sc_default/checkpoints/best-XXX.ckpt \
        --data-root ../shared/data/speech_commands_dev --plot docs/spotting_curve.png

In window mode a window's keyword posteriors count only when its sound is centred
(`--centre-s`, see `speechcnn.spotting`); several values give one JSON line each, from the same
posterior track, and each has its own threshold chosen on validation (`test_best_within_budget`
is the best testing row within the false-alarm budget, for the record, not a choice).

Prints one JSON line per setting. `test_clip_posteriors` is the reference the spotter works
from: the share of the testing stream's keyword clips whose whole-clip posterior for their own
word (the model on the clip alone, as in training) reaches 0.5, 0.9 and 0.95.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from speechcnn.data.audio import read_audio
from speechcnn.data.speech_commands import KEYWORDS, NOISE_DIR, read_noise
from speechcnn.spotting import SpotConfig, detect, energy_offsets, posterior_track

# 0.3-0.85 in steps of 0.05, then 0.9-0.99 in steps of 0.01 (unique: arange's float end can
# repeat 0.9)
THRESHOLDS = np.unique(
    np.round(np.concatenate([np.arange(0.3, 0.9, 0.05), np.arange(0.9, 1.0, 0.01)]), 3)
)


def build_stream(
    root: Path, split_list: str, out_dir: Path, seed: int, sample_rate: int = 16000
) -> tuple[np.ndarray, list[dict]]:
    """The stream of a split's clips with noise gaps, and its ground truth (cached on disk)."""
    name = Path(split_list).stem
    wav, truth_path = out_dir / f"{name}_stream.wav", out_dir / f"{name}_truth.json"
    if wav.is_file() and truth_path.is_file():
        return read_audio(wav, sample_rate), json.loads(truth_path.read_text())
    rng = np.random.default_rng(seed)
    rels = [r for r in (root / split_list).read_text().split() if r.strip()]
    rng.shuffle(rels)
    noise = read_noise(root, sample_rate)
    pieces, truth, position = [], [], 0

    def gap() -> np.ndarray:
        length = int(rng.uniform(1.0, 5.0) * sample_rate)
        source = noise[rng.integers(len(noise))]
        start = rng.integers(0, len(source) - length)
        return source[start : start + length] * rng.uniform(0.3, 1.0)

    for rel in rels:
        pieces.append(gap())
        position += len(pieces[-1])
        clip = read_audio(root / rel, sample_rate)
        word = rel.split("/")[0]
        truth.append(
            {
                "word": word if word in KEYWORDS else "_unknown_",
                "start": position / sample_rate,
                "end": (position + len(clip)) / sample_rate,
                "file": rel,
            }
        )
        pieces.append(clip)
        position += len(clip)
    pieces.append(gap())
    stream = np.concatenate(pieces).astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    sf.write(wav, stream, sample_rate, subtype="FLOAT")
    truth_path.write_text(json.dumps(truth))
    return stream, truth


def word_centre(clip: np.ndarray, sample_rate: int, range_db: float = 25.0) -> float:
    """Seconds from a clip's start to the middle of its word: of the span from the first to the
    last 10 ms frame within `range_db` of the loudest frame."""
    size = sample_rate // 100
    n = max(1, len(clip) // size)
    frames = np.pad(clip, (0, max(0, n * size - len(clip))))[: n * size].reshape(n, size)
    level = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)  # (n,) dB
    loud = np.flatnonzero(level >= level.max() - range_db)
    return (loud[0] + loud[-1] + 1) / 2 * size / sample_rate


def score(detections: list, truth: list[dict], seconds: float) -> dict:
    """Detection rate over keyword clips and false alarms per hour (truth rows carry the word's
    `centre` in seconds)."""
    keywords = [g for g in truth if g["word"] in KEYWORDS]
    matched: set[int] = set()
    false_alarms = 0
    for d in detections:
        hit = None
        for i, g in enumerate(truth):
            if g["word"] == d.keyword and d.start <= g["centre"] <= d.end and i not in matched:
                hit = i
                break
        if hit is None:
            false_alarms += 1
        else:
            matched.add(hit)
    return {
        "detection_rate": round(len(matched) / max(1, len(keywords)), 4),
        "false_alarms": false_alarms,
        "fa_per_hour": round(false_alarms / (seconds / 3600), 2),
        "keywords": len(keywords),
    }


def sweep(track: object, names: list[str], truth: list[dict], seconds: float, args: object) -> list:
    rows = []
    for threshold in THRESHOLDS:
        config = SpotConfig(
            threshold=float(threshold),
            smooth_s=args.smooth_s,
            refractory_s=args.refractory_s,
            mode=args.mode,
            hop_s=args.hop_s,
        )
        result = score(detect(track, names, config), truth, seconds)
        rows.append({"threshold": float(threshold), **result})
    return rows


def main() -> None:
    import torch

    from speechcnn.classify import classify_waveforms, load_classifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="checkpoint (.ckpt)")
    parser.add_argument("--data-root", default="../shared/data/speech_commands_dev")
    parser.add_argument("--out-dir", default="runs/spotting")
    parser.add_argument("--mode", default="window", choices=["window", "stream"])
    parser.add_argument("--smooth-s", type=float, default=SpotConfig.smooth_s)
    parser.add_argument("--refractory-s", type=float, default=SpotConfig.refractory_s)
    parser.add_argument("--hop-s", type=float, default=SpotConfig.hop_s)
    parser.add_argument(
        "--centre-s",
        type=float,
        nargs="+",
        default=[SpotConfig.centre_s],
        help="window mode: count only windows whose sound is centred within this many seconds "
        "(0: every window); several values give one line each, from the same posterior track",
    )
    parser.add_argument("--max-fa-per-hour", type=float, default=10.0)
    parser.add_argument("--plot", help="write the detection/false-alarm curve to this PNG")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    root, out_dir = Path(args.data_root), Path(args.out_dir)
    if not (root / NOISE_DIR).is_dir():
        raise SystemExit(f"{root} is not a Speech Commands folder with {NOISE_DIR}/")
    loaded = load_classifier(args.model)
    splits = {}
    for split, list_name in [("val", "validation_list.txt"), ("test", "testing_list.txt")]:
        sr = loaded.sample_rate
        stream, truth = build_stream(root, list_name, out_dir, args.seed + (split == "test"), sr)
        clips = [stream[round(g["start"] * sr) : round(g["end"] * sr)] for g in truth]
        for g, clip in zip(truth, clips, strict=True):
            g["centre"] = g["start"] + word_centre(clip, sr)
        start = time.perf_counter()
        config = SpotConfig(mode=args.mode, hop_s=args.hop_s, centre_s=None)
        track = posterior_track(loaded.model, stream, config)
        elapsed = time.perf_counter() - start
        offsets = (
            energy_offsets(stream, sr, track.ends, track.spans) if args.mode == "window" else None
        )
        kept = [
            (clip, loaded.class_names.index(g["word"]))
            for g, clip in zip(truth, clips, strict=True)
            if g["word"] in KEYWORDS and g["word"] in loaded.class_names
        ]
        waveforms = [clip for clip, _ in kept]
        probs = classify_waveforms(loaded.model, waveforms)
        probs = probs[range(len(kept)), [label for _, label in kept]].numpy()
        splits[split] = {
            "track": track,
            "offsets": offsets,
            "truth": truth,
            "seconds": len(stream) / sr,
            "track_seconds": elapsed,
            "clip_posteriors": {
                f"{th:g}": round(float(np.mean(probs >= th)), 4) for th in (0.5, 0.9, 0.95)
            },
        }

    sweeps = {}
    for centre_s in args.centre_s:
        centre = centre_s if args.mode == "window" and centre_s else None
        results = {}
        for split, data in splits.items():
            track = data["track"]
            track.centred = None if centre is None else np.abs(data["offsets"]) <= centre
            rows = sweep(track, loaded.class_names, data["truth"], data["seconds"], args)
            scalars = {k: v for k, v in data.items() if k not in ("track", "offsets", "truth")}
            results[split] = scalars | {"rows": rows}
        line, chosen = summary(results, centre, args)
        sweeps[str(centre)] = results
        if args.plot and centre_s == args.centre_s[0]:
            plot(results, chosen, centre, args, args.plot)
        print(json.dumps(line), flush=True)
    (out_dir / f"sweep_{args.mode}.json").write_text(json.dumps(sweeps))


def summary(results: dict, centre: float | None, args: object) -> tuple[dict, float]:
    """The benchmark's line for one setting, and the threshold chosen on validation: the most
    detections with false alarms within the budget."""
    best_val = best_within_budget(results["val"]["rows"], args.max_fa_per_hour)
    chosen = best_val["threshold"] if best_val else 0.99
    test_row = next(r for r in results["test"]["rows"] if r["threshold"] == chosen)
    val_row = next(r for r in results["val"]["rows"] if r["threshold"] == chosen)
    line = {
        "model": args.model,
        "mode": args.mode,
        "smooth_s": args.smooth_s,
        "refractory_s": args.refractory_s,
        "hop_s": args.hop_s,
        "centre_s": centre,
        "threshold": chosen,
        "test_detection_rate": test_row["detection_rate"],
        "test_fa_per_hour": test_row["fa_per_hour"],
        "test_false_alarms": test_row["false_alarms"],
        "test_keywords": test_row["keywords"],
        "test_stream_minutes": round(results["test"]["seconds"] / 60, 2),
        "val_detection_rate": val_row["detection_rate"],
        "val_fa_per_hour": val_row["fa_per_hour"],
        "val_stream_minutes": round(results["val"]["seconds"] / 60, 2),
        "test_rtf": round(results["test"]["track_seconds"] / results["test"]["seconds"], 4),
        "test_clip_posteriors": results["test"]["clip_posteriors"],
    }
    # the best testing row within the budget, for the record (the threshold is not picked there)
    if best_test := best_within_budget(results["test"]["rows"], args.max_fa_per_hour):
        line["test_best_within_budget"] = best_test
    return line, chosen


def best_within_budget(rows: list[dict], max_fa_per_hour: float) -> dict | None:
    """The row with the most detections at most `max_fa_per_hour` false alarms an hour (the
    lower threshold on a tie), or None."""
    ok = [r for r in rows if r["fa_per_hour"] <= max_fa_per_hour]
    return max(ok, key=lambda r: (r["detection_rate"], -r["threshold"])) if ok else None


def plot(results: dict, chosen: float, centre: float | None, args: object, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    fa_axis = left.twinx()
    for split, style in [("val", "--"), ("test", "-")]:
        rows = results[split]["rows"]
        th = [r["threshold"] for r in rows]
        left.plot(th, [r["detection_rate"] for r in rows], style, label=f"{split} detection rate")
        right.plot(
            [r["fa_per_hour"] for r in rows],
            [r["detection_rate"] for r in rows],
            style + "o",
            ms=3,
            label=split,
        )
        fa_axis.plot(
            th, [r["fa_per_hour"] for r in rows], style, color="tab:red", label=f"{split} FA/h"
        )
    fa_axis.set_ylabel("false alarms per hour", color="tab:red")
    left.axvline(chosen, color="gray", lw=0.8)
    left.set_xlabel("threshold")
    left.set_ylabel("detection rate")
    handles = left.get_legend_handles_labels()
    fa_handles = fa_axis.get_legend_handles_labels()
    left.legend(handles[0] + fa_handles[0], handles[1] + fa_handles[1], fontsize=8)
    right.axvline(10, color="gray", lw=0.8, ls=":")
    right.set_xlabel("false alarms per hour")
    right.set_ylabel("detection rate")
    centred = f", centre {centre:g} s" if centre else ""
    right.set_title(f"{args.mode} mode{centred}; threshold {chosen} chosen on val", fontsize=9)
    name = Path(args.model).name
    fig.suptitle(f"keyword spotting on real-clip streams: {name}", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
