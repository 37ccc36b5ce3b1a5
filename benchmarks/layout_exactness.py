"""FrequencyCNN's convolution layouts on one device: do they compute the same function?

Training mode (batch statistics, running statistics updated), no dropout: output, input
gradient, weight gradients and running statistics of each layout against "nchw", in float64
(must agree to rounding, ~1e-12) and in float32 with TF32 off and on (PyTorch's default for
cuDNN convolutions), where rounding can flip a max-pooling near-tie.

    python benchmarks/layout_exactness.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speechcnn import frontend  # noqa: E402


def compare(
    device: torch.device, dtype: torch.dtype = torch.float32, batch: int = 64, frames: int = 98
) -> None:
    torch.manual_seed(0)
    cnn = frontend.FrequencyCNN(40, (32, 64), (5, 5), pools=(2, 2), dropout=0.0)
    cnn = cnn.to(device, dtype)
    start = {k: v.clone() for k, v in cnn.state_dict().items()}
    x = torch.randn(batch, 40, frames, device=device, dtype=dtype)
    results = {}
    for layout in frontend.CONV_LAYOUTS:
        frontend.CONV_LAYOUT[device.type] = layout
        cnn.load_state_dict(start)
        cnn.zero_grad()
        xi = x.clone().requires_grad_()
        y = cnn(xi)
        y.square().sum().backward()
        results[layout] = {
            "output": y.detach(),
            "input_grad": xi.grad,
            **{f"grad.{n}": p.grad.clone() for n, p in cnn.named_parameters()},
            **{f"buffer.{n}": b.clone().float() for n, b in cnn.named_buffers()},
        }
    for layout, tensors in results.items():
        worst, name = 0.0, ""
        for key, t in tensors.items():
            ref = results["nchw"][key]
            relative = ((t - ref).abs().max() / ref.abs().max().clamp(min=1e-12)).item()
            if key != "input_grad" and relative >= worst:
                worst, name = relative, key
        ref = results["nchw"]["input_grad"]
        off = ((tensors["input_grad"] - ref).abs() > 1e-3 * ref.abs().max()).sum().item()
        # A max-pooling pair whose two values differ by less than the rounding can pick the
        # other element: its gradient goes there. Count such input-gradient elements.
        print(
            f"  {layout:>6}: outputs, weight gradients and running statistics within "
            f"{worst:.1e} of nchw (relative to each tensor's largest value; worst {name}); "
            f"input-gradient elements off by > 1e-3: {off} of {ref.numel()}"
        )


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # float64: rounding is far below any difference in what is computed, and max-pooling
    # near-ties vanish: every layout must agree to ~1e-12.
    print(f"{device}, float64:")
    compare(device, torch.float64)
    for tf32 in (False, True):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        print(f"{device}, float32, TF32 {'on' if tf32 else 'off'}:")
        compare(device)


if __name__ == "__main__":
    main()
