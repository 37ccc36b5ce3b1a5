"""`speechcnn classify MODEL FILES...`: top-k labels of audio files, one JSON line per file.

Files of any format libsndfile reads (WAV, FLAC, OGG, ...), sample rate and channel count:
channels are averaged and the audio is resampled (soxr, high quality) to the model's rate.
A file is one utterance: clips shorter than the training clip are classified on their own
frames (as training did with zero padding and lengths), longer ones on all their frames; for
recordings that hold several words use `speechcnn spot`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from speechcnn.checkpoints import CheckpointFileError, load_module
from speechcnn.data.audio import AudioError, read_audio
from speechcnn.model import SpeechClassifier


@dataclass
class LoadedModel:
    """A classifier ready for inference, with what its checkpoint says about its input and,
    when it was calibrated for a false-alarm budget, its spotting settings (`calibration`)."""

    model: SpeechClassifier
    class_names: list[str]
    sample_rate: int
    calibration: dict | None = None


class ModelFileError(CheckpointFileError):
    """A model checkpoint that is missing or is not a speechcnn training checkpoint."""


def load_classifier(path: str | Path) -> LoadedModel:
    """The classifier of a Lightning checkpoint (.ckpt), on CPU, in eval mode.

    Raises:
        ModelFileError: the file is missing or holds no speechcnn model (the message says which
            file and why).
    """
    try:
        module = load_module(path)
    except CheckpointFileError as error:
        raise ModelFileError(str(error)) from error
    return LoadedModel(
        model=module.inference_model.eval(),
        class_names=list(module.class_names),
        sample_rate=int(module.hparams.sample_rate),
        calibration=getattr(module, "calibration", None),
    )


@torch.no_grad()
def classify_waveforms(model: SpeechClassifier, waveforms: list[np.ndarray]) -> Tensor:
    """(B, K) class probabilities of B mono clips of any lengths at the model's sample rate.

    Clips are zero-padded to a common length (at least one window) and classified on their
    valid frames only, so a clip gets the same answer alone or in a batch.
    """
    n_fft = model.features.n_fft
    lengths = torch.tensor([max(len(w), 1) for w in waveforms])
    width = max(int(lengths.max()), n_fft)
    batch = torch.zeros(len(waveforms), width)  # (B, S)
    for i, w in enumerate(waveforms):
        batch[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    # A clip shorter than one window still needs one frame: count its padding as valid.
    lengths = lengths.clamp(min=n_fft)
    return model(batch, lengths).softmax(dim=-1)


def top_k(probs: Tensor, class_names: list[str], k: int) -> list[dict[str, float | str]]:
    """The k most probable labels of (K,) probabilities, best first."""
    values, indices = probs.topk(min(k, len(class_names)))
    return [
        {"label": class_names[i], "prob": round(float(v), 6)}
        for v, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def classify_files(
    loaded: LoadedModel, files: list[str | Path], k: int = 3
) -> list[dict[str, object]]:
    """One result per file: {"file", "top": [{"label", "prob"}...]} or {"file", "error"}."""
    results: list[dict[str, object]] = []
    for file in files:
        try:
            samples = read_audio(file, loaded.sample_rate)
        except AudioError as error:
            results.append({"file": str(file), "error": str(error)})
            continue
        probs = classify_waveforms(loaded.model, [samples])[0]
        results.append({"file": str(file), "top": top_k(probs, loaded.class_names, k)})
    return results


def main(argv: list[str] | None = None) -> int:
    """`speechcnn classify MODEL FILES... [--top-k K]`; exit status 1 if any file failed."""
    parser = argparse.ArgumentParser(
        prog="speechcnn classify",
        description="Top-k labels of audio files (any sample rate and channel count), "
        "one JSON line per file.",
    )
    parser.add_argument("model", help="a trained checkpoint (.ckpt)")
    parser.add_argument("files", nargs="+", help="WAV, FLAC, OGG, ... files")
    parser.add_argument("--top-k", type=int, default=3, help="labels per file (default 3)")
    args = parser.parse_args(argv)
    if args.top_k <= 0:
        parser.error(f"--top-k must be positive, got {args.top_k}")
    torch.set_grad_enabled(False)
    try:
        loaded = load_classifier(args.model)
    except ModelFileError as error:
        parser.error(str(error))
    failed = False
    for result in classify_files(loaded, args.files, args.top_k):
        print(json.dumps(result))
        if "error" in result:
            print(f"speechcnn classify: {result['error']}", file=sys.stderr)
            failed = True
    return int(failed)


def cli(argv: list[str]) -> None:
    """Entry for `speechcnn classify` (exits with `main`'s status)."""
    sys.exit(main(argv))
