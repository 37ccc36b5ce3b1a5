"""Export for deployment: TorchScript, ONNX and int8 dynamic quantization.

Artefacts `speechcnn export MODEL --out-dir DIR` writes:

- `model.ts`: TorchScript, features inside: (B, S) float waveforms -> (B, K) logits (traced;
  torch.stft is a TorchScript op, so the graph holds the exact log-mel of training).
- `model_features.onnx`: ONNX, features outside: (B, F, T) log-mel (`LogMelFeatures`, before
  the input norm) -> (B, K) logits; the caller computes the log-mel with the Hann window and
  hop that meta.json records, no centring, slaney mel, log(x + 1e-6).
- `model.onnx`: ONNX, features inside: (B, S) waveforms -> (B, K) logits, the STFT as a
  strided convolution with a windowed DFT basis (ONNX export of torch.stft fails on its
  complex output), equal within float rounding.
- `model_int8.ts`: TorchScript with the LSTM and linear layers dynamically quantized to int8.
- `meta.json`: class names, sample rate, feature settings, sizes and checks.

Every graph takes any batch size and clip length: the waveform graphs zero-pad a clip shorter
than one window (n_fft samples) to one window, as `speechcnn classify` does; the features graph
takes any number of frames >= 1.
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


class WaveformToLogits(nn.Module):
    """(B, S) waveforms -> (B, K) logits with a given feature extractor (for export)."""

    def __init__(self, features: nn.Module, model: SpeechClassifier) -> None:
        super().__init__()
        self.features = features
        self.classifier = FeaturesToLogits(model)

    def forward(self, waveforms: Tensor) -> Tensor:
        """Logits of waveforms: (B, S) -> (B, K)."""
        return self.classifier(self.features(waveforms))


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
        inner = WaveformToLogits(DFTLogMel(model.features), model)
        module: nn.Module = PadToWindow(inner, model.features.n_fft).eval()
        example, name, axes = wave, "waveforms", {0: "batch", 1: "samples"}
    else:
        module = FeaturesToLogits(model).eval()
        example, name, axes = model.features(wave), "features", {0: "batch", 2: "frames"}
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer notes on Python shape checks, and the exporter's note that an LSTM traced
        # at one batch size may warn at others (the dynamic axes cover it).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=[name],
            output_names=["logits"],
            dynamic_axes={name: axes, "logits": {0: "batch"}},
        )


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
    diffs = dict.fromkeys(runs, 0.0)
    with torch.no_grad():
        for samples in waveforms:
            wave = torch.from_numpy(np.asarray(samples, dtype=np.float32))[None]  # (1, S)
            reference = model(wave).numpy()
            for key, run in runs.items():
                diffs[key] = max(diffs[key], float(np.abs(run(wave) - reference).max()))
    return diffs


def accuracy(model: nn.Module, waveforms: Tensor, lengths: Tensor, labels: Tensor) -> float:
    """Fraction of clips classified right: (N, S) waveforms, (N,) lengths and labels."""
    from speechcnn.classify import batched_logits

    if len(labels) == 0:
        return 0.0
    correct = batched_logits(model, waveforms, lengths).argmax(-1) == labels  # (N,)
    return int(correct.sum()) / len(labels)


def int8_accuracy_change(model: SpeechClassifier, data_root: str | Path) -> dict[str, float]:
    """Float and int8 accuracy on the Speech Commands testing split (12-class task)."""
    from speechcnn.data.speech_commands import SpeechCommandsDataModule

    data = SpeechCommandsDataModule(root=str(data_root), sample_rate=model.features.sample_rate)
    data.setup("test")
    clips = data.clips["test"]
    float_acc = accuracy(_eval_copy(model), clips.waveforms, clips.lengths, clips.labels)
    int8_acc = accuracy(quantize_int8(model), clips.waveforms, clips.lengths, clips.labels)
    return {
        "test_clips": len(clips),
        "float_acc": round(float_acc, 4),
        "int8_acc": round(int8_acc, 4),
        "change": round(int8_acc - float_acc, 4),
    }


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
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    """`speechcnn export MODEL --out-dir DIR [--no-onnx] [--no-int8] [--check FILES...]
    [--accuracy-root DIR]`."""
    from speechcnn.classify import ModelFileError, load_classifier
    from speechcnn.data.audio import read_audio

    parser = argparse.ArgumentParser(
        prog="speechcnn export",
        description="Export a checkpoint to TorchScript, ONNX and int8 TorchScript; "
        "prints one JSON line (sizes, and max abs logit differences with --check).",
    )
    parser.add_argument("model", help="a trained checkpoint (.ckpt)")
    parser.add_argument("--out-dir", required=True, help="folder for the exported files")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX files")
    parser.add_argument("--no-int8", action="store_true", help="skip int8 quantization")
    parser.add_argument(
        "--accuracy-root",
        help="a Speech Commands v0.02 folder: report float and int8 accuracy on its testing split",
    )
    parser.add_argument(
        "--check", nargs="*", default=[], help="audio files to compare exports with PyTorch on"
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
    if args.accuracy_root:
        result["int8_accuracy"] = int8_accuracy_change(loaded.model, args.accuracy_root)
    print(json.dumps(result))


cli = main  # `speechcnn export` (EXTRA_COMMANDS in speechcnn.cli)


__all__ = [
    "DFTLogMel",
    "FeaturesToLogits",
    "PadToWindow",
    "WaveformToLogits",
    "accuracy",
    "check_exports",
    "export_all",
    "export_onnx",
    "export_torchscript",
    "int8_accuracy_change",
    "quantize_int8",
    "serialized_size",
]
