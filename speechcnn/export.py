"""Export for deployment: TorchScript, ONNX and int8 dynamic quantization.

`speechcnn export MODEL --out-dir DIR` writes `model.ts` (TorchScript, waveforms in, the exact
log-mel of training inside), `model.onnx` (waveforms in, the STFT as a strided convolution with
a windowed DFT basis, as ONNX cannot export torch.stft's complex output), `model_features.onnx`
(log-mel in), `model_stream.onnx` (one streaming step, its state as explicit inputs and
outputs), `model_int8.ts` (LSTM and linear layers quantized to int8) and `meta.json` (classes,
feature settings, sizes). The clip graphs take any batch size and clip length; a clip shorter
than one window is zero-padded to one, as `speechcnn classify` does. See docs/export.md.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from speechcnn.features import LogMelFeatures
from speechcnn.model import SpeechClassifier


class FeaturesToLogits(nn.Module):
    """The classifier after the features: (B, F, T) log-mel -> (B, K) logits."""

    def __init__(self, model: SpeechClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor) -> Tensor:
        """(B, F, T) log-mel energies, as `LogMelFeatures` gives them -> (B, K) logits."""
        return self.model.classify_features(features)


class DFTLogMel(nn.Module):
    """`LogMelFeatures` without complex numbers: the STFT as a strided convolution.

    Row j of the (2 * (n_fft/2+1), 1, n_fft) kernel is the Hann window times cos (real part)
    or -sin (imaginary part) of DFT bin j, so conv1d with stride hop gives the STFT of the
    non-centred frames; exportable to ONNX, equal to torch.stft within float rounding.
    """

    def __init__(self, features: LogMelFeatures) -> None:
        super().__init__()
        if features.dct is not None:
            raise ValueError("DFTLogMel covers log-mel features; this model uses MFCCs")
        n_fft, n_freq = features.n_fft, features.n_fft // 2 + 1
        self.hop, self.n_freq = features.hop_length, n_freq
        self.features = features  # for its filterbank and log, after this module's STFT
        # float64 for the basis so its own rounding stays below float32's.
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_freq, dtype=torch.float64)
        angle = 2 * math.pi * torch.outer(k, n) / n_fft  # (n_freq, n_fft)
        window = features.window.to(torch.float64)
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
        self.register_buffer("basis", basis.float().unsqueeze(1))  # (2*n_freq, 1, n_fft)

    def forward(self, waveforms: Tensor) -> Tensor:
        """(B, S) float waveforms, S >= n_fft -> (B, F, T) log-mel energies."""
        # (B, S) -> (B, 1, S) -> conv -> (B, 2*n_freq, T)
        spec = nn.functional.conv1d(waveforms.unsqueeze(1), self.basis, stride=self.hop)
        real, imag = spec[:, : self.n_freq], spec[:, self.n_freq :]  # (B, n_freq, T) each
        power = real * real + imag * imag
        return self.features.from_mel_energies(self.features.mel(power))


class PadToWindow(nn.Module):
    """Zero-pads clips shorter than one analysis window to one window, then runs `inner`.

    A clip shorter than `n_fft` samples has no frame; padded, it is one frame of the clip and
    silence, as `classify_waveforms` classifies it. Tensor operations only (pad by a window,
    keep max(S, n_fft) samples), so a traced graph keeps the padding for every clip length.
    """

    def __init__(self, inner: nn.Module, n_fft: int) -> None:
        super().__init__()
        self.inner, self.n_fft = inner, n_fft

    def forward(self, waveforms: Tensor) -> Tensor:
        """(B, S) waveforms, any S >= 0 -> what `inner` gives for (B, max(S, n_fft))."""
        padded = nn.functional.pad(waveforms, (0, self.n_fft))  # (B, S + n_fft)
        length = torch.ones_like(padded[0]).sum() - self.n_fft  # S, as a traced value
        keep = torch.clamp(length, min=float(self.n_fft)).long()
        index = torch.arange(keep, device=waveforms.device)
        return self.inner(padded.index_select(1, index))


class StreamingStep(nn.Module):
    """One step of a stream, its state as explicit inputs and outputs (for devices that keep
    the state themselves, as kws_streaming's external-state mode).

    Inputs: (frames * hop,) new samples, the (n_fft - hop,) samples carried from the previous
    step (at the start: the stream's first n_fft - hop samples) and the head's `StreamState`
    (h, c: (L, 1, H); log_total: (1, 1), -inf at the start; pooled: (1, K), zeros at the
    start). Outputs: (frames, K) posteriors at the frames completed, then the carried samples
    and the state for the next step. The posteriors are `Streamer`'s.
    """

    def __init__(self, model: SpeechClassifier, features: nn.Module) -> None:
        super().__init__()
        self.model, self.features = model, features
        self.overlap = model.features.n_fft - model.features.hop_length

    def forward(self, samples: Tensor, carried: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        span = torch.cat([carried, samples])[None]  # (S,) -> (1, S): whole frames only
        x = self.model.frontend(self.model.input_norm(self.features(span)))
        logits, state = self.model.head.infer(x, state)
        return (logits[0].softmax(-1), span[0, span.shape[1] - self.overlap :], *state)


def export_streaming_onnx(model: SpeechClassifier, path: str | Path, frames: int = 1) -> dict:
    """Save `StreamingStep` as ONNX for `frames` frames per step; returns its inputs' shapes."""
    model = _eval_copy(model)
    step = StreamingStep(model, DFTLogMel(model.features)).eval()
    hop = model.features.hop_length
    h, c, log_total, pooled = model.head.initial_state()
    example = (torch.zeros(frames * hop), torch.zeros(step.overlap), h, c, log_total, pooled)
    names = ["samples", "carried", "h", "c", "log_total", "pooled"]
    outputs = ["posteriors", *(f"next_{name}" for name in names[1:])]
    _onnx(step, example, path, names, outputs, None)
    return {name: list(t.shape) for name, t in zip(names, example, strict=True)}


def _eval_copy(model: SpeechClassifier) -> SpeechClassifier:
    return copy.deepcopy(model).eval()


def export_torchscript(model: SpeechClassifier, path: str | Path) -> torch.jit.ScriptModule:
    """Trace `model` (features inside: (B, S) -> (B, K) logits) and save it to `path`."""
    model = _eval_copy(model)
    example = torch.zeros(2, model.features.sample_rate)  # (B, S): 1 s; any B, S works later
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        padded = PadToWindow(model, model.features.n_fft).eval()
        traced = torch.jit.trace(padded, (example,), check_trace=False)
    traced.save(str(path))
    return traced


def export_onnx(model: SpeechClassifier, path: str | Path, features_inside: bool) -> None:
    """Save `model` as ONNX: (B, S) waveforms or, features outside, (B, F, T) log-mel -> (B, K)
    logits, with the TorchScript-based exporter (opset 17), which needs no onnxscript."""
    model = _eval_copy(model)
    wave = torch.zeros(2, model.features.sample_rate)  # (B, S)
    if features_inside:
        inner = nn.Sequential(DFTLogMel(model.features), FeaturesToLogits(model))
        module: nn.Module = PadToWindow(inner, model.features.n_fft).eval()
        example, name, axes = wave, "waveforms", {0: "batch", 1: "samples"}
    else:
        module = FeaturesToLogits(model).eval()
        example, name, axes = model.features(wave), "features", {0: "batch", 2: "frames"}
    _onnx(module, (example,), path, [name], ["logits"], {name: axes, "logits": {0: "batch"}})


def _onnx(
    module: nn.Module,
    example: tuple,
    path: str | Path,
    inputs: list,
    outputs: list,
    axes: dict | None,
) -> None:
    """torch.onnx.export with the TorchScript-based exporter (opset 17, no onnxscript needed)."""
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer notes on Python shape checks, and the exporter's note that an LSTM traced
        # at one batch size may warn at others (the dynamic axes cover it).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), dynamo=False, opset_version=17, input_names=inputs,
            output_names=outputs, dynamic_axes=axes,
        )  # fmt: skip


def quantize_int8(model: SpeechClassifier) -> SpeechClassifier:
    """A copy of `model` with nn.LSTM and nn.Linear dynamically quantized to int8 weights."""
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not a dependency.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            _eval_copy(model), {nn.LSTM, nn.Linear}, dtype=torch.qint8
        )


def serialized_size(module: nn.Module) -> int:
    """Bytes of `module`'s state dict as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def onnx_session(path: str | Path) -> object:
    """An onnxruntime CPU session (onnxruntime is in the `dev` extra)."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def stream_onnx(
    session: object, model: SpeechClassifier, wave: Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """(T, K) posteriors of a (S,) recording through model_stream.onnx, one frame per call, and
    `Streamer`'s for the same frames."""
    from speechcnn.streaming import Streamer

    hop, overlap = model.features.hop_length, model.features.n_fft - model.features.hop_length
    state = [t.numpy() for t in model.head.initial_state()]
    samples, rows = wave.numpy(), []
    carried = samples[:overlap]
    for done in range(overlap, len(samples) - hop + 1, hop):
        inputs = dict(zip(["h", "c", "log_total", "pooled"], state, strict=True))
        posteriors, carried, *state = session.run(  # type: ignore[attr-defined]
            None, {"samples": samples[done : done + hop], "carried": carried, **inputs}
        )
        rows.append(posteriors)
    frames = len(rows)
    expected = Streamer(model).push(wave[: overlap + frames * hop]).posteriors.numpy()
    return np.concatenate(rows) if rows else expected, expected


def check_exports(
    model: SpeechClassifier, out_dir: str | Path, waveforms: list[np.ndarray]
) -> dict[str, float]:
    """Max abs logit difference of each exported float model from PyTorch on `waveforms`.

    Each clip is run alone (B=1, its own length), so lengths need no padding.
    """
    out_dir, model = Path(out_dir), _eval_copy(model)
    scripted = torch.jit.load(str(out_dir / "model.ts"))
    # each export's logits, as numpy, for a (1, S) waveform
    runs = {"torchscript": lambda wave: scripted(wave).numpy()}
    if (out_dir / "model.onnx").is_file():
        waveform_session = onnx_session(out_dir / "model.onnx")
        runs["onnx_waveform"] = lambda wave: waveform_session.run(
            None, {"waveforms": wave.numpy()}
        )[0]
    if (out_dir / "model_features.onnx").is_file():
        features_session = onnx_session(out_dir / "model_features.onnx")
        runs["onnx_features"] = lambda wave: features_session.run(
            None, {"features": model.features(wave).numpy()}
        )[0]
    if (out_dir / "model_stream.onnx").is_file():
        stream_session = onnx_session(out_dir / "model_stream.onnx")
        runs["onnx_stream_posteriors"] = lambda wave: stream_onnx(stream_session, model, wave[0])
    diffs = dict.fromkeys(runs, 0.0)
    with torch.no_grad():
        for samples in waveforms:
            wave = torch.from_numpy(np.asarray(samples, dtype=np.float32))[None]  # (1, S)
            reference = model(wave).numpy()
            for key, run in runs.items():
                if key == "onnx_stream_posteriors":  # compared with the streamer's posteriors
                    result, reference_ = run(wave)
                else:
                    result, reference_ = run(wave), reference
                diffs[key] = max(diffs[key], float(np.abs(result - reference_).max()))
    return diffs


def writable_folder(out_dir: str | Path) -> Path:
    """`out_dir`, created if missing, once a file could be written there.

    Raises:
        ValueError: it is a file, or cannot be created or written to (the message says why).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out-dir {out_dir} is a file: expected a folder to write the exports to")
    probe = out_dir / ".speechcnn-write-test"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(
            f"cannot write to out-dir {out_dir} ({reason}): expected a folder this user can "
            "create and write to"
        ) from error
    return out_dir


def export_all(
    model: SpeechClassifier,
    class_names: list[str],
    out_dir: str | Path,
    onnx: bool = True,
    int8: bool = True,
    streaming: bool = True,
) -> dict[str, object]:
    """Write every artefact (see the module docstring) to `out_dir`; returns meta.json's data.

    Raises:
        ValueError: `out_dir` is a file, or a folder that cannot be created or written to.
    """
    out_dir = writable_folder(out_dir)
    model = _eval_copy(model)
    export_torchscript(model, out_dir / "model.ts")
    files = ["model.ts"]
    if onnx:
        export_onnx(model, out_dir / "model.onnx", features_inside=True)
        export_onnx(model, out_dir / "model_features.onnx", features_inside=False)
        files += ["model.onnx", "model_features.onnx"]
        if streaming and not model.head.bidirectional:
            stream_inputs = export_streaming_onnx(model, out_dir / "model_stream.onnx")
            files.append("model_stream.onnx")
    sizes = {"float32_state_dict_bytes": serialized_size(model)}
    if int8:
        quantized = quantize_int8(model)
        export_torchscript(quantized, out_dir / "model_int8.ts")
        files.append("model_int8.ts")
        sizes["int8_state_dict_bytes"] = serialized_size(quantized)
    sizes.update({f"{name}_bytes": (out_dir / name).stat().st_size for name in files})
    f = model.features
    settings = {name: getattr(f, name) for name in ("n_fft", "hop_length", "n_mels")}
    settings.update(window="hann", center=False, mel="slaney", log_floor=f.log_floor)
    meta: dict[str, object] = {
        "class_names": list(class_names),
        "sample_rate": f.sample_rate,
        "features": settings,
        "outputs": "logits (softmax gives class probabilities)",
        "files": files,
        "sizes": sizes,
    }
    if "model_stream.onnx" in files:
        meta["stream_inputs"] = stream_inputs  # model_stream.onnx: one frame per step
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    """`speechcnn export MODEL --out-dir DIR [--no-onnx] [--no-int8] [--check FILES...]
    [--accuracy-root DIR]`."""
    from speechcnn.classify import ModelFileError, load_classifier
    from speechcnn.data.audio import read_audio

    parser = argparse.ArgumentParser(
        prog="speechcnn export",
        description="Export a checkpoint to TorchScript, ONNX (whole clips and a streaming step) "
        "and int8 TorchScript; "
        "prints one JSON line (sizes, and max abs logit differences with --check).",
    )
    parser.add_argument("model", help="a trained checkpoint (.ckpt)")
    parser.add_argument("--out-dir", required=True, help="folder for the exported files (required)")
    parser.add_argument(
        "--no-onnx", action="store_true", help="skip the ONNX files (default: written)"
    )
    parser.add_argument(
        "--no-int8",
        action="store_true",
        help="skip int8 quantization (default: model_int8.ts written)",
    )
    parser.add_argument(
        "--check",
        nargs="*",
        default=[],
        help="audio files to compare exports with PyTorch on (default: none)",
    )
    args = parser.parse_args(argv)
    try:
        loaded = load_classifier(args.model)
    except ModelFileError as error:
        parser.error(str(error))
    meta = export_all(
        loaded.model, loaded.class_names, args.out_dir, not args.no_onnx, not args.no_int8
    )
    result: dict[str, object] = {"out_dir": args.out_dir, "sizes": meta["sizes"]}
    if args.check:
        clips = [read_audio(p, loaded.sample_rate) for p in args.check]
        result["max_abs_logit_diff"] = check_exports(loaded.model, args.out_dir, clips)
        result["checked_clips"] = len(clips)
    print(json.dumps(result))


cli = main  # `speechcnn export` (EXTRA_COMMANDS in speechcnn.cli)
