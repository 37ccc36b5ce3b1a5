"""Training throughput: speechcnn's Lightning training vs a bare loop vs the tutorial pipeline.

Generates a Speech-Commands-shaped data set of real WAV files (1 s, 16 kHz, 16-bit; a tenth
of the clips shorter, as in the real set; `_background_noise_` recordings; split lists), then
measures in one run, with the same model, batch size, precision and augmentation:

  (a) speechcnn: the recipe's model and data module under the Lightning Trainer (waveform
      store, device-resident batches, augmentation and features batched on the device);
  (b) bare:      a hand-written PyTorch loop over the split already on the device: the ceiling
      for this model;
  (c) tutorial:  a torch Dataset that reads each WAV file and computes its augmentation and
      log-mel features per item, in a DataLoader with N workers (N = 2, 8, every core).

Each is timed over steps after warm-up steps (a: whole training epochs after a first one).
Prints one JSON line: samples/s of each, the ratios and the projected seconds per
84,843-clip epoch. With --cnn-layouts it first times FrequencyCNN's convolution layouts
(speechcnn.frontend.CONV_LAYOUT) and trains with the fastest.

    python benchmarks/train_throughput.py --clips 1200 --batch-size 64          # a laptop CPU
    python benchmarks/train_throughput.py --clips 84843 --batch-size 1024 \\
        --precision bf16-mixed --cnn-layouts nchw,nhwc                           # one GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import wave
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from speechcnn import frontend  # noqa: E402
from speechcnn.augment import Augmentation, AugmentConfig  # noqa: E402
from speechcnn.data.clips import to_float  # noqa: E402
from speechcnn.data.speech_commands import KEYWORDS, SpeechCommandsDataModule  # noqa: E402
from speechcnn.features import LogMelFeatures  # noqa: E402
from speechcnn.model import ClassifierConfig, build_classifier  # noqa: E402
from speechcnn.recipe import stacked_config  # noqa: E402
from speechcnn.training import SpeechClassifierModule  # noqa: E402

FULL_EPOCH = 84_843  # Speech Commands v0.02 training clips
SAMPLE_RATE = 16000
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "happy")


# ----------------------------------------------------------------------------- data set


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def _write_word(job: tuple[Path, str, int, int]) -> list[str]:
    root, word, count, seed = job
    rng = np.random.default_rng(seed)
    folder = root / word
    folder.mkdir(parents=True, exist_ok=True)
    f0 = 150.0 + 40.0 * (sum(map(ord, word)) % 40)
    names = []
    for i in range(count):
        # A tenth of the clips are shorter than 1 s, as in the real data set.
        n = SAMPLE_RATE if rng.random() > 0.1 else int(SAMPLE_RATE * rng.uniform(0.5, 1.0))
        t = np.arange(n) / SAMPLE_RATE
        clip = 0.3 * np.sin(2 * np.pi * f0 * t * rng.uniform(0.95, 1.05))
        clip += 0.01 * rng.standard_normal(n)
        name = f"{seed:04x}{i:06x}_nohash_0.wav"
        _write_wav(folder / name, clip.astype(np.float32))
        names.append(f"{word}/{name}")
    return names


def make_dataset(root: Path, clips: int, workers: int) -> Path:
    """A Speech Commands v0.02 folder whose 12-class training split has about `clips` clips.

    The 12-class training split is the keywords, as many unknown-word clips as a keyword
    class and as many silence clips: 12 classes of `clips // 12`.
    """
    per_class = max(2, clips // 12)
    done = root / ".complete"
    if done.is_file() and done.read_text() == str(per_class):
        return root
    root.mkdir(parents=True, exist_ok=True)
    per_unknown = -(-per_class // len(UNKNOWN_WORDS))
    jobs = [(root, w, per_class, i) for i, w in enumerate(KEYWORDS)]
    jobs += [(root, w, per_unknown, 100 + i) for i, w in enumerate(UNKNOWN_WORDS)]
    with Pool(workers) as pool:
        names = [n for chunk in pool.map(_write_word, jobs) for n in chunk]
    noise = root / "_background_noise_"
    noise.mkdir(exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(2):
        _write_wav(noise / f"noise{i}.wav", 0.1 * rng.standard_normal(SAMPLE_RATE * 60))
    # A handful of clips for validation and testing: the benchmark trains on the rest.
    # (about 20 clips each; at most a twentieth of a small set).
    step = max(20, len(names) // 20)
    (root / "validation_list.txt").write_text("\n".join(names[::step]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(names[1::step]) + "\n")
    done.write_text(str(per_class))
    return root


# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def recipe(path: Path, layers: list[Path] = ()) -> tuple[dict, ClassifierConfig, dict]:
    """Model, architecture and data settings of a recipe config with `layers` stacked on it."""
    config = stacked_config([path, *layers])
    model = dict(config["model"])
    net = {k: tuple(v) if isinstance(v, list) else v for k, v in model.pop("net").items()}
    return model, ClassifierConfig(**net), dict(config["data"]["init_args"])


def time_layouts(
    net: ClassifierConfig,
    layouts: list[str],
    batch: int,
    device: torch.device,
    precision: str,
    compile_layout: str | None = None,
) -> dict[str, dict]:
    """Forward and backward time of FrequencyCNN per layout; difference to "nchw" in fp32."""
    model = build_classifier(net, 12).to(device).train()
    cnn = model.frontend
    frames = model.features.num_frames(SAMPLE_RATE)
    x = torch.randn(batch, net.n_mels, frames, device=device)
    results, reference = {}, None
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    tf32 = torch.backends.cudnn.allow_tf32
    for layout in layouts:
        frontend.CONV_LAYOUT[device.type] = layout
        cnn.load_state_dict(state)  # the timing runs below update batch-norm statistics
        xi = x[:64].clone().requires_grad_()
        cnn.eval()  # no dropout, fixed statistics: a deterministic comparison
        # cuDNN convolves in TF32 by default (10-bit mantissa), and each layout picks its own
        # kernels: compare the layouts in full float32, time them with the defaults.
        torch.backends.cudnn.allow_tf32 = False
        y = cnn(xi)
        y.square().sum().backward()
        torch.backends.cudnn.allow_tf32 = tf32
        if reference is None:
            reference = (y.detach(), xi.grad)
        diff = max(
            (y.detach() - reference[0]).abs().max().item(),
            (xi.grad - reference[1]).abs().max().item(),
        )
        cnn.train()
        ms = _time_fwd_bwd(cnn, x, device, precision)
        results[layout] = {"ms_fwd_bwd": round(ms, 2), "max_abs_diff_fp32": diff}
        print(f"cnn layout {layout}: {ms:.2f} ms fwd+bwd at batch {batch}, diff {diff:.2e}")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            ms = _time_fwd_bwd(cnn, x, device, precision)
            torch.backends.cudnn.benchmark = False
            results[layout]["ms_fwd_bwd_cudnn_benchmark"] = round(ms, 2)
            print(f"cnn layout {layout}: {ms:.2f} ms with cudnn.benchmark")
    if compile_layout is not None:
        frontend.CONV_LAYOUT[device.type] = compile_layout
        start = time.perf_counter()
        compiled = torch.compile(cnn)
        _time_fwd_bwd(compiled, x, device, precision, steps=1)
        seconds = time.perf_counter() - start
        ms = _time_fwd_bwd(compiled, x, device, precision)
        results[f"compiled_{compile_layout}"] = {
            "ms_fwd_bwd": round(ms, 2),
            "compile_s": round(seconds, 1),
        }
        print(f"cnn compiled ({compile_layout}): {ms:.2f} ms fwd+bwd, compiled in {seconds:.0f} s")
    return results


def _time_fwd_bwd(
    cnn: torch.nn.Module, x: Tensor, device: torch.device, precision: str, steps: int = 10
) -> float:
    """Milliseconds of one forward and backward pass, after three untimed ones."""
    for _ in range(3):
        with autocast(device, precision):
            out = cnn(x)
        out.float().sum().backward()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with autocast(device, precision):
            out = cnn(x)
        out.float().sum().backward()
    sync(device)
    return (time.perf_counter() - start) / steps * 1000


PROFILED_STEPS = 10


class Profiler:
    """torch.profiler over `steps` training steps; prints where a step's time goes.

    Per step: wall time, host (CPU) time of the operators PyTorch dispatched and how many
    there were, and on a GPU the kernels' busy time: a step whose host time exceeds its GPU
    time is bound by the host (Python and kernel launches), not by the GPU.
    """

    def __init__(self, device: torch.device, name: str, steps: int) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.device, self.name, self.steps = device, name, steps
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.prof = profile(activities=activities)

    def __enter__(self) -> Profiler:
        sync(self.device)
        self.prof.__enter__()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        sync(self.device)
        wall = time.perf_counter() - self.start
        self.prof.__exit__(*exc)
        events = self.prof.key_averages()
        steps = self.steps
        ops = [e for e in events if e.key.startswith("aten::")]
        host = sum(e.self_cpu_time_total for e in events) / 1e3 / steps  # us -> ms
        line = (
            f"profile {self.name}: {wall / steps * 1e3:.2f} ms/step wall, host {host:.2f} ms/step "
            f"in {sum(e.count for e in ops) / steps:.0f} operators/step"
        )
        if self.device.type == "cuda":
            from torch.autograd import DeviceType

            # Kernels and copies only: operators (CPU events) and user annotations such as
            # "Optimizer.step" report the device time of the kernels they contain.
            kernels = [
                e
                for e in events
                if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
            ]
            gpu = sum(e.self_device_time_total for e in kernels) / 1e3 / steps  # us -> ms
            launches = sum(e.count for e in events if "LaunchKernel" in e.key) / steps
            line += f", GPU busy {gpu:.2f} ms/step, {launches:.0f} kernel launches/step"
        print(line)
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        print(events.table(sort_by=sort, row_limit=20, max_name_column_width=60))
        sort = "self_cpu_time_total"
        if self.device.type == "cuda":
            print(events.table(sort_by=sort, row_limit=20, max_name_column_width=60))


# ----------------------------------------------------------------------------- (a) Lightning


def run_lightning(
    data: SpeechCommandsDataModule,
    model_args: dict,
    net: ClassifierConfig,
    precision: str,
    accelerator: str,
    epochs: int,
    limit_batches: int | None,
    compile: bool = False,
    profile: bool = False,
) -> dict:
    import pytorch_lightning as pl

    class StepProfiler(pl.Callback):
        """Profiles PROFILED_STEPS steps of an extra, untimed epoch."""

        def span(self, trainer: pl.Trainer) -> tuple[int, int]:
            """First and last profiled batch: five in, fewer steps in a short epoch."""
            batches = trainer.num_training_batches
            first = max(0, min(5, batches - PROFILED_STEPS))
            return first, min(first + PROFILED_STEPS, batches) - 1

        def on_train_batch_start(
            self, trainer: pl.Trainer, module: pl.LightningModule, batch: object, i: int
        ) -> None:
            first, last = self.span(trainer)
            if trainer.current_epoch == epochs and i == first:
                name, steps = "(a) speechcnn Lightning", last - first + 1
                self.prof = Profiler(module.device, name, steps).__enter__()

        def on_train_batch_end(
            self, trainer: pl.Trainer, module: pl.LightningModule, out: object, b: object, i: int
        ) -> None:
            if trainer.current_epoch == epochs and i == self.span(trainer)[1]:
                self.prof.__exit__(None, None, None)

    class EpochClock(pl.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            sync(module.device)
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            sync(module.device)
            self.seconds.append(time.perf_counter() - self.start)

    pl.seed_everything(0, verbose=False)
    module = SpeechClassifierModule(
        data.class_names, data.sample_rate, net=net, compile=compile, **model_args
    )
    clock = EpochClock()
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=epochs + profile,  # the profiled epoch is an extra one, not timed
        precision=precision,
        limit_train_batches=limit_batches,
        limit_val_batches=0,  # training throughput only
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=20,
        callbacks=[clock, StepProfiler()] if profile else [clock],
    )
    trainer.fit(module, datamodule=data)
    steps = trainer.num_training_batches
    # The first epoch warms up (device copy, kernel selection).
    timed = clock.seconds[1:epochs]
    seconds = sum(timed) / len(timed)
    return {
        "samples_per_s": steps * data.batch_size / seconds,
        "epoch_s": seconds,
        "steps_per_epoch": steps,
        "loader": type(trainer.train_dataloader).__name__,
    }


# ----------------------------------------------------------------------------- (b) bare loop


def run_bare(
    data: SpeechCommandsDataModule,
    model_args: dict,
    net: ClassifierConfig,
    precision: str,
    device: torch.device,
    warmup: int,
    steps: int,
    fused: bool = False,
    profile: bool = False,
) -> dict:
    torch.manual_seed(0)
    clips = data.clips["train"]
    waveforms, lengths, labels = (
        t.to(device) for t in (clips.waveforms, clips.lengths, clips.labels)
    )
    model = build_classifier(net, data.num_classes, data.sample_rate).to(device).train()
    augment = Augmentation(
        AugmentConfig(**model_args.get("augment", {})), data.sample_rate, data.training_noise
    ).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=model_args["lr"],
        weight_decay=model_args["weight_decay"],
        fused=fused or None,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    batch = data.batch_size
    order = torch.randperm(len(clips), device=device)

    def step(i: int) -> None:
        start = i * batch % max(1, len(clips) - batch)
        index = order[start : start + batch]
        x = augment.waveforms(to_float(waveforms[index]), lengths[index])
        with autocast(device, precision):
            features = augment.features(model.features, x)
            loss = F.cross_entropy(
                model.classify_features(features, model.frame_lengths(lengths[index])),
                labels[index],
                label_smoothing=model_args.get("label_smoothing", 0.0),
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for i in range(warmup):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    result = {"samples_per_s": steps * batch / (time.perf_counter() - start)}
    if profile:
        with Profiler(device, "(b) bare loop", PROFILED_STEPS):
            for i in range(PROFILED_STEPS):
                step(i)
    return result


# ----------------------------------------------------------------------------- (c) tutorial


def read_wav(path: str) -> np.ndarray:
    """A WAV file as float32, through soundfile when installed, else the stdlib `wave`."""
    try:
        import soundfile

        return soundfile.read(path, dtype="float32")[0]
    except ImportError:
        with wave.open(path, "rb") as w:
            return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


class TutorialDataset(Dataset):
    """The usual per-item pipeline: read the WAV, pad, shift, mix noise, compute log-mel."""

    def __init__(
        self, items: list[tuple[str, int]], noise: np.ndarray, net: ClassifierConfig, aug: dict
    ) -> None:
        self.items, self.noise, self.aug = items, noise, aug
        self.features = LogMelFeatures(SAMPLE_RATE, net.n_mels, net.win_ms, net.hop_ms)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        path, label = self.items[i]
        x = read_wav(path)[:SAMPLE_RATE]
        length = len(x)
        x = np.pad(x, (0, SAMPLE_RATE - length))
        shift = np.random.randint(-self.aug["shift"], self.aug["shift"] + 1)
        x = np.roll(x, shift)
        if shift > 0:
            x[:shift] = 0
        elif shift < 0:
            x[shift:] = 0
        if np.random.rand() < self.aug["prob"]:
            start = np.random.randint(0, len(self.noise) - SAMPLE_RATE)
            gain = np.random.uniform(0, self.aug["volume"])
            x = np.clip(x + gain * self.noise[start : start + SAMPLE_RATE], -1, 1)
        with torch.no_grad():
            features = self.features(torch.from_numpy(x.astype(np.float32))[None])[0]  # (F, T)
        return features, int(self.features.num_frames(length)), label


def run_tutorial(
    data: SpeechCommandsDataModule,
    model_args: dict,
    net: ClassifierConfig,
    precision: str,
    device: torch.device,
    workers: int,
    warmup: int,
    steps: int,
) -> dict:
    torch.manual_seed(0)
    items = data.split_items("train")
    a = Augmentation(AugmentConfig(**model_args.get("augment", {})), data.sample_rate)
    dataset = TutorialDataset(
        [(str(p), y) for p, y in items],
        data.training_noise.numpy(),
        net,
        {"shift": a.shift_samples, "prob": a.noise_prob, "volume": a.noise_volume},
    )
    loader = DataLoader(
        dataset,
        batch_size=data.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    model = build_classifier(net, data.num_classes, data.sample_rate).to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=model_args["lr"], weight_decay=model_args["weight_decay"]
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    start = time.perf_counter()
    timed_from, done = None, 0
    while done < warmup + steps:
        for features, frames, labels in loader:
            features = features.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast(device, precision):
                x = a.spec_augment(features)  # (B, F, T), batched as usual
                logits = model.classify_features(x, frames)
                loss = F.cross_entropy(
                    logits, labels, label_smoothing=model_args.get("label_smoothing", 0.0)
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            done += 1
            if done == warmup:
                sync(device)
                timed_from = time.perf_counter()
            if done == warmup + steps:
                break
    sync(device)
    end = time.perf_counter()
    return {
        "samples_per_s": steps * data.batch_size / (end - timed_from),
        "startup_and_warmup_s": timed_from - start,
    }


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=1200, help="training clips to generate")
    parser.add_argument("--data", type=Path, default=None, help="folder of the generated data")
    parser.add_argument("--config", type=Path, default=REPO / "recipes" / "speech_commands.yaml")
    parser.add_argument(
        "--layer",
        type=Path,
        action="append",
        default=[],
        help="YAML stacked on --config, e.g. recipes/presets/small.yaml (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on GPU, else 32")
    parser.add_argument("--workers", default="2,8,all", help="tutorial DataLoader workers")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (b, c)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (b, c)")
    parser.add_argument("--epochs", type=int, default=2, help="(a): the first is untimed")
    parser.add_argument(
        "--limit-batches", type=int, default=None, help="(a): steps per epoch (default: all)"
    )
    parser.add_argument("--cnn-layouts", default=None, help="time these, train with the fastest")
    parser.add_argument("--cnn-layout", default=None, help="train with this layout")
    parser.add_argument(
        "--compile-layout", default=None, help="also time torch.compile of the CNN in this layout"
    )
    parser.add_argument("--compile", action="store_true", help="also run (a) with compile=True")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile 10 steps of (a), in an extra untimed epoch, and of (b), after its timing",
    )
    parser.add_argument("--skip", default="", help="comma list of a,b,c to skip")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON line here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    cores = os.cpu_count() or 1
    model_args, net, data_args = recipe(args.config, args.layer)
    batch = args.batch_size or data_args.get("batch_size", 64)
    root = args.data or Path("/tmp") / "speechcnn_bench" / f"sc_{args.clips}"
    skip = set(filter(None, args.skip.split(",")))

    start = time.perf_counter()
    make_dataset(root, args.clips, min(cores, 16))
    generate_s = time.perf_counter() - start
    data_kwargs = {
        k: v for k, v in data_args.items() if k not in ("root", "batch_size", "num_workers")
    }
    cache_dir = root.parent / f"{root.name}_cache"
    timings = {}
    for attempt in ("first", "again"):  # the first run decodes into the store, later ones map it
        data = SpeechCommandsDataModule(
            root=str(root), batch_size=batch, cache_dir=str(cache_dir), **data_kwargs
        )
        start = time.perf_counter()
        data.setup("fit")
        timings[attempt] = time.perf_counter() - start
    n_train = len(data.clips["train"])
    print(
        f"data: {n_train} training clips; generated in {generate_s:.1f} s; setup "
        f"{timings['first']:.1f} s (first), {timings['again']:.2f} s (cached)",
        flush=True,
    )

    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": [str(path) for path in [args.config, *args.layer]],
        "parameters": sum(p.numel() for p in build_classifier(net, 12).parameters()),
        "clips": n_train,
        "batch_size": batch,
        "precision": precision,
        "setup_first_s": round(timings["first"], 2),
        "setup_cached_s": round(timings["again"], 3),
    }
    if args.cnn_layouts:
        layouts = args.cnn_layouts.split(",")
        table = time_layouts(net, layouts, batch, device, precision, args.compile_layout)
        result["cnn_layouts"] = table
        best = min(layouts, key=lambda k: table[k]["ms_fwd_bwd"])
        frontend.CONV_LAYOUT[device.type] = args.cnn_layout or best
    elif args.cnn_layout:
        frontend.CONV_LAYOUT[device.type] = args.cnn_layout
    result["cnn_layout"] = frontend.CONV_LAYOUT.get(device.type, "nchw")

    rates: dict[str, float] = {}
    if "a" not in skip:
        a = run_lightning(
            data,
            model_args,
            net,
            precision,
            accelerator,
            args.epochs,
            args.limit_batches,
            profile=args.profile,
        )
        rates["a"] = a["samples_per_s"]
        result["a_loader"] = a["loader"]
        result["a_epoch_s_measured"] = round(a["epoch_s"], 3)
        print(f"(a) speechcnn Lightning: {rates['a']:.0f} samples/s", flush=True)
    if args.compile:
        a = run_lightning(
            data, model_args, net, precision, accelerator, args.epochs, args.limit_batches, True
        )
        rates["a_compiled"] = a["samples_per_s"]
        print(f"(a) speechcnn Lightning, compiled: {rates['a_compiled']:.0f} samples/s")
    if "b" not in skip:
        rates["b"] = run_bare(
            data, model_args, net, precision, device, args.warmup, args.steps, profile=args.profile
        )["samples_per_s"]
        print(f"(b) bare loop: {rates['b']:.0f} samples/s", flush=True)
        if device.type == "cuda":
            rates["b_fused_adamw"] = run_bare(
                data, model_args, net, precision, device, args.warmup, args.steps, fused=True
            )["samples_per_s"]
            print(f"(b) bare loop, fused AdamW: {rates['b_fused_adamw']:.0f} samples/s")
    if "c" not in skip:
        counts = {}
        for w in args.workers.split(","):
            counts[w] = cores if w == "all" else int(w)
        measured: dict[int, float] = {}
        for label, n in counts.items():
            if n not in measured:
                c = run_tutorial(
                    data, model_args, net, precision, device, n, args.warmup, args.steps
                )
                measured[n] = c["samples_per_s"]
                print(
                    f"(c) tutorial, {n} workers: {measured[n]:.0f} samples/s "
                    f"(startup + warm-up {c['startup_and_warmup_s']:.1f} s)",
                    flush=True,
                )
            rates[f"c{label}"] = measured[n]
    result["samples_per_s"] = {k: round(v, 1) for k, v in rates.items()}
    result["projected_epoch_s_84843"] = {k: round(FULL_EPOCH / v, 2) for k, v in rates.items()}
    ratios = {}
    if "a" in rates:
        for k, v in rates.items():
            if not k.startswith("a"):
                ratios[f"a/{k}"] = round(rates["a"] / v, 3)
    result["ratios"] = ratios
    line = json.dumps(result)
    print(line, flush=True)
    if args.json:
        args.json.write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
