"""CPU inference cost on one thread, float32 and int8 (dynamic quantization of LSTM and linear).

- latency: one 1 s clip, median over --repeats calls;
- throughput: clips per second in batches of --batch;
- streaming: a --stream-s recording pushed through `speechcnn.streaming.Streamer` in chunks of
  each of --chunk-ms (10 ms; 20 ms, one frame per call at a 20 ms hop; 100 ms; 1 s): cost per
  10 ms of audio and real-time factor (processing time / audio duration; below 1 keeps up
  with live audio). `float` streams with the fused step (`speechcnn.fused_step`),
  `float_modules` through the model's own modules (`SpeechClassifier.infer`), `int8` too.

The machine's 1-minute load average is part of the line: on a shared CPU, other processes'
load inflates every wall-clock figure; the streaming `cpu_rtf` (CPU seconds of this process per
second of audio) is what one core spends, whatever else runs.

Audio: real testing clips from --data-root when it exists (concatenated), else noise.

Run:
    nice -n 5 python benchmarks/inference.py runs/sc_default/checkpoints/best-XXX.ckpt

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from speechcnn.classify import load_classifier
from speechcnn.data.audio import read_audio
from speechcnn.export import quantize_int8
from speechcnn.model import SpeechClassifier
from speechcnn.streaming import Streamer


def benchmark_audio(root: Path, seconds: float, sample_rate: int) -> np.ndarray:
    """`seconds` of real clips from the testing list (or low-level noise without data)."""
    listing = root / "testing_list.txt"
    need = int(seconds * sample_rate)
    if not listing.is_file():
        return (0.05 * np.random.default_rng(0).standard_normal(need)).astype(np.float32)
    pieces, total = [], 0
    for rel in listing.read_text().split():
        pieces.append(read_audio(root / rel, sample_rate))
        total += len(pieces[-1])
        if total >= need:
            break
    return np.concatenate(pieces)[:need]


@torch.inference_mode()
def latency_ms(model: SpeechClassifier, clip: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of one (1, S) clip through the model."""
    for _ in range(10):
        model(clip)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(clip)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@torch.inference_mode()
def throughput(model: SpeechClassifier, batch: torch.Tensor, repeats: int) -> float:
    """Clips per second for (B, S) batches (best of `repeats`, after a warm-up)."""
    model(batch)
    best = min(_timed(lambda: model(batch)) for _ in range(repeats))
    return len(batch) / best


def _timed(function: object) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


@torch.inference_mode()
def streaming_cost(
    model: SpeechClassifier, audio: np.ndarray, chunk_ms: float, fused: bool = True
) -> dict:
    """Streaming `audio` in chunks of `chunk_ms`: microseconds per 10 ms of audio, and RTF."""
    streamer = Streamer(model, fused=fused)
    chunk = max(1, round(streamer.sample_rate * chunk_ms / 1000))
    samples = torch.from_numpy(audio)
    chunks = [samples[i : i + chunk] for i in range(0, len(samples), chunk)]
    for piece in chunks[:20]:  # warm-up
        streamer.push(piece)
    runs, cpu_runs = [], []
    for _ in range(3):  # best of three passes over the recording
        streamer.reset()
        start, cpu_start = time.perf_counter(), time.process_time()
        for piece in chunks:
            streamer.push(piece)
        runs.append(time.perf_counter() - start)
        cpu_runs.append(time.process_time() - cpu_start)
    seconds = len(audio) / streamer.sample_rate
    elapsed = min(runs)
    return {
        "us_per_10ms": round(elapsed / (seconds / 0.01) * 1e6, 1),
        "rtf": round(elapsed / seconds, 5),
        # CPU seconds this process used: what the work costs one core, without the time the
        # scheduler gave to other processes on a shared machine.
        "cpu_rtf": round(min(cpu_runs) / seconds, 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="checkpoint (.ckpt)")
    parser.add_argument("--data-root", default="../shared/data/speech_commands_dev")
    parser.add_argument("--repeats", type=int, default=200, help="latency calls")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--stream-s", type=float, default=30.0)
    parser.add_argument(
        "--chunk-ms", default="10,20,100,1000", help="comma-separated streaming chunk sizes"
    )
    args = parser.parse_args()
    chunk_sizes = [float(c) for c in args.chunk_ms.split(",")]

    torch.set_num_threads(1)
    loaded = load_classifier(args.model)
    sr = loaded.sample_rate
    audio = benchmark_audio(Path(args.data_root), max(args.stream_s, args.batch), sr)
    clip = torch.from_numpy(audio[:sr])[None]  # (1, S)
    batch = torch.from_numpy(audio[: args.batch * sr]).reshape(args.batch, sr)  # (B, S)
    stream = audio[: int(args.stream_s * sr)]
    line: dict[str, object] = {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "stream_s": args.stream_s,
    }
    kinds = [
        ("float", loaded.model, True),
        ("float_modules", loaded.model, False),
        ("int8", quantize_int8(loaded.model), True),
    ]
    for name, model, fused in kinds:
        if fused:  # one model, one latency: the modules path differs in streaming only
            line[f"{name}_latency_ms"] = round(latency_ms(model, clip, args.repeats), 3)
            line[f"{name}_throughput_clips_s"] = round(throughput(model, batch, 5), 1)
        for chunk_ms in chunk_sizes:
            cost = streaming_cost(model, stream, chunk_ms, fused)
            line[f"{name}_stream_{chunk_ms:g}ms_us_per_10ms"] = cost["us_per_10ms"]
            line[f"{name}_stream_{chunk_ms:g}ms_rtf"] = cost["rtf"]
            line[f"{name}_stream_{chunk_ms:g}ms_cpu_rtf"] = cost["cpu_rtf"]
    print(json.dumps(line))


if __name__ == "__main__":
    main()
