"""Float32 and int8 accuracy of a checkpoint on a Speech Commands v0.02 testing split.

int8 is `speechcnn.export.quantize_int8` (dynamic quantization of the LSTM and linear layers),
the model of `model_int8.ts`. Run:

    python benchmarks/int8_accuracy.py runs/speech_commands/checkpoints/last.ckpt \
        --data-root ../shared/data/speech_commands_dev

Prints one JSON line: test_clips, float_acc, int8_acc, change.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from speechcnn.classify import load_classifier
from speechcnn.data.clips import to_float
from speechcnn.data.speech_commands import SpeechCommandsDataModule
from speechcnn.export import quantize_int8
from speechcnn.model import SpeechClassifier


@torch.no_grad()
def accuracy(model: nn.Module, waveforms: Tensor, lengths: Tensor, labels: Tensor) -> float:
    """Fraction of (N, S) padded clips with (N,) lengths classified as their (N,) labels, in
    batches of 64 (bounded memory)."""
    if len(labels) == 0:
        return 0.0
    logits = torch.cat([
        model(to_float(waveforms[i : i + 64]), lengths[i : i + 64])
        for i in range(0, len(waveforms), 64)
    ])  # fmt: skip
    return int((logits.argmax(-1) == labels).sum()) / len(labels)


def int8_accuracy_change(model: SpeechClassifier, data_root: str | Path) -> dict[str, float]:
    """Float and int8 accuracy on the testing split of the Speech Commands folder `data_root`."""
    data = SpeechCommandsDataModule(root=str(data_root), sample_rate=model.features.sample_rate)
    data.setup("test")
    clips = data.clips["test"]
    float_acc = accuracy(model.eval(), clips.waveforms, clips.lengths, clips.labels)
    int8_acc = accuracy(quantize_int8(model), clips.waveforms, clips.lengths, clips.labels)
    return {
        "test_clips": len(clips),
        "float_acc": round(float_acc, 4),
        "int8_acc": round(int8_acc, 4),
        "change": round(int8_acc - float_acc, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained checkpoint (.ckpt)")
    parser.add_argument("--data-root", default="../shared/data/speech_commands_dev")
    args = parser.parse_args()
    print(json.dumps(int8_accuracy_change(load_classifier(args.model).model, args.data_root)))


if __name__ == "__main__":
    main()
