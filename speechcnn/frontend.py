"""Frequency-only CNN front end.

Every convolution kernel is (k, 1) and every pooling window (p, 1) in (frequency, time), with
time stride 1. Each output frame is therefore a function of one input frame: the front end
learns spectral patterns shared across frequency positions and leaves time to the recurrent
layer, and a unidirectional model can stream frame by frame with no look-ahead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# How `FrequencyCNN.forward` lays out its (k, 1) convolutions, per device type: the same modules
# and function in the memory layout the kernels see. "nchw": (B, C, F, T), PyTorch's default;
# "nhwc": channels_last from the first convolution's output on. benchmarks/layout_exactness.py
# shows they agree; benchmarks/train_throughput.py --cnn-layouts chose nhwc (fwd+bwd of the
# default's CNN: 6.8 ms against 15.5 ms at batch 1024 bf16 on an H200, 10-45% faster at batch
# 64 fp32 on a 2-core CPU; docs/performance.md).
CONV_LAYOUTS = ("nchw", "nhwc")
CONV_LAYOUT: dict[str, str] = {"cpu": "nhwc", "cuda": "nhwc"}

ACTIVATIONS: dict[str, type[nn.Module]] = dict(relu=nn.ReLU, gelu=nn.GELU, silu=nn.SiLU, elu=nn.ELU)


@dataclass(frozen=True)
class LayerSummary:
    """One convolution layer as `FrequencyCNN.describe` reports it."""

    index: int
    filters: int
    filter_shape: tuple[int, int, int]  # (C_in, k_freq, k_time)
    weights_per_filter: int
    output_shape: tuple[int, int, int]  # (C_out, F', T) after conv and pooling
    parameters: int  # conv weights and biases plus batch-norm scale and shift


class FrequencyCNN(nn.Module):
    """Stack of (k, 1) convolutions with batch norm, activation, (p, 1) pooling and dropout.

    Args:
        in_freq: number of input frequency bins F.
        channels: output channels of each layer.
        kernel_sizes: frequency extent k of each layer's kernels (time extent is always 1).
        strides: frequency stride of each layer (default 1 everywhere).
        pools: frequency max-pooling window of each layer, 1 for none (default 1 everywhere).
        in_channels: input channels C (1 for a plain spectrogram).
        dropout: dropout after each layer.
        activation: one of "relu", "gelu", "silu", "elu".
        batch_norm: batch norm after each convolution (frame-local at inference).
    """

    def __init__(
        self,
        in_freq: int,
        channels: Sequence[int] = (32, 64),
        kernel_sizes: Sequence[int] = (5, 5),
        strides: Sequence[int] | None = None,
        pools: Sequence[int] | None = None,
        in_channels: int = 1,
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        n = len(channels)
        strides = [1] * n if strides is None else list(strides)
        pools = [1] * n if pools is None else list(pools)
        if in_freq <= 0 or in_channels <= 0:
            raise ValueError(
                f"in_freq and in_channels must be positive, got {in_freq}, {in_channels}"
            )
        if n == 0:
            raise ValueError("channels must name at least one layer")
        settings = [("kernel_sizes", kernel_sizes), ("strides", strides), ("pools", pools)]
        for name, values in settings + [("channels", channels)]:
            if len(values) != n:
                raise ValueError(
                    f"{name} has {len(values)} entries, channels has {n}: {list(values)}"
                )
            if any(v <= 0 for v in values):
                raise ValueError(f"{name} must be positive, got {list(values)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")

        self.in_freq, self.in_channels = in_freq, in_channels
        layers: list[nn.Module] = []
        c_in, f = in_channels, in_freq
        self._out_freqs: list[int] = []
        for c_out, k, s, p in zip(channels, kernel_sizes, strides, pools, strict=True):
            # Frequency padding k // 2 keeps F for odd k and stride 1; time is never padded.
            f = ((f + 2 * (k // 2) - k) // s + 1) // p
            if f <= 0:
                raise ValueError(
                    f"layer {len(self._out_freqs)} leaves no frequency bins "
                    f"(in_freq={in_freq}, kernel_sizes={list(kernel_sizes)}, "
                    f"strides={list(strides)}, pools={list(pools)})"
                )
            block = [
                nn.Conv2d(
                    c_in, c_out, (k, 1), stride=(s, 1), padding=(k // 2, 0), bias=not batch_norm
                ),
                nn.BatchNorm2d(c_out) if batch_norm else None,
                ACTIVATIONS[activation](),
                nn.MaxPool2d((p, 1)) if p > 1 else None,
                nn.Dropout(dropout) if dropout > 0 else None,
            ]
            layers.append(nn.Sequential(*(m for m in block if m is not None)))
            self._out_freqs.append(f)
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels, self.out_freq, self.out_features = c_in, f, c_in * f

    def forward(self, x: Tensor) -> Tensor:
        """(B, F, T) spectrogram or (B, C, F, T) feature maps -> (B, T, D) frame embeddings,
        D = `out_features`."""
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (B, F, T) -> (B, 1, F, T)
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] != self.in_freq:
            raise ValueError(
                f"expected (B, F={self.in_freq}, T) or (B, C={self.in_channels}, "
                f"F={self.in_freq}, T), got {tuple(x.shape)}"
            )
        layout = CONV_LAYOUT.get(x.device.type, "nchw")
        if layout == "nhwc":
            for block in self.layers:
                for module in block:
                    # One input channel looks alike in both layouts, so the first convolution
                    # answers in NCHW: converted here (a no-op for every later module's input).
                    x = module(x.contiguous(memory_format=torch.channels_last))
        elif layout == "nchw":
            x = self.layers(x)  # (B, C', F', T)
        else:
            raise ValueError(f"CONV_LAYOUT must map to one of {CONV_LAYOUTS}, got {layout!r}")
        return x.flatten(1, 2).transpose(1, 2)  # (B, C', F', T) -> (B, C'*F', T) -> (B, T, C'*F')

    def describe(self, num_frames: int = 1) -> list[LayerSummary]:
        """Per-layer filter shape, weights per filter, output shape and parameter count."""
        summaries = []
        c_in = self.in_channels
        for i, (block, f) in enumerate(zip(self.layers, self._out_freqs, strict=True)):
            c_out, k = block[0].out_channels, block[0].kernel_size[0]
            params = sum(p.numel() for p in block.parameters())
            summaries.append(
                LayerSummary(i, c_out, (c_in, k, 1), c_in * k, (c_out, f, num_frames), params)
            )
            c_in = c_out
        return summaries

    def summary(self, num_frames: int = 1) -> str:
        """`describe` as a printable table."""
        rows = [
            f"input: ({self.in_channels}, {self.in_freq}, {num_frames})  (C, F, T)",
            f"{'layer':>5} {'filters':>7} {'filter (C,k,1)':>15} {'weights/filter':>14} "
            f"{'output (C,F,T)':>16} {'params':>8}",
        ]
        for s in self.describe(num_frames):
            rows.append(
                f"{s.index:>5} {s.filters:>7} {str(s.filter_shape):>15} {s.weights_per_filter:>14} "
                f"{str(s.output_shape):>16} {s.parameters:>8}"
            )
        total = sum(p.numel() for p in self.parameters())
        rows.append(f"total parameters: {total}; output features D = {self.out_features}")
        return "\n".join(rows)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
