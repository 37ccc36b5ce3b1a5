"""A fused, compiled form of `SpeechClassifier.infer` for streaming on the CPU.

At 10-20 ms chunks a stream's cost is the number of operations, not the arithmetic: through
the model's own modules a 20 ms chunk costs about four times what it costs here
(benchmarks/inference.py, docs/streaming.md), as PyTorch's kernels are built for batches, not
for one frame. `FrameStep` computes the same function from copies of the weights in one
TorchScript call (tests/test_streaming.py); `speechcnn.streaming.Streamer` uses it where it
applies.
"""

# No `from __future__ import annotations`: TorchScript needs the class-level attribute
# annotations of FrameBatchPath and FrameStep as real types, not strings.

import warnings

import torch
from torch import Tensor, nn

from speechcnn.features import LogMelFeatures
from speechcnn.frontend import ACTIVATIONS
from speechcnn.model import SpeechClassifier, pool_frame


class FrameBatchPath(nn.Module):
    """The features, input norm and front end of an eval-mode model, with frames as the batch.

    Every stage is frame-local, so a chunk's T frames are a batch of T one-frame inputs: the
    STFT is an rfft of windowed frames, batch norms are folded into affine maps, and each
    (k, 1) convolution is one matrix product over all frames' frequency windows (im2col in a
    (T, F, C) layout), since for a few frames PyTorch picks a much slower unblocked kernel.
    The weights are CPU copies of `model`'s; ValueError if its front end holds a module other
    than `FrequencyCNN`'s (conv, batch norm, activation, max pool, dropout).
    """

    conv_weight: list[Tensor]  # (C_in * k, C_out) each once built
    conv_bias: list[Tensor]
    conv_kernel: list[int]
    conv_stride: list[int]
    conv_padding: list[int]
    pool_size: list[int]
    pool_stride: list[int]
    program: list[tuple[str, int]]  # (operation, index into its settings)

    def __init__(self, model: SpeechClassifier) -> None:
        super().__init__()
        features: LogMelFeatures = model.features
        self.n_fft, self.hop = features.n_fft, features.hop_length
        # added to the mel energies by the mel product itself (addmm's bias)
        self.register_buffer("log_floor", torch.full((features.n_mels,), features.log_floor))
        self.register_buffer("window", features.window.detach().cpu().clone())
        # (n_fft/2+1, F) -> (2 (n_fft/2+1), F), each row twice: the filterbank applied to
        # interleaved (re^2, im^2) pairs sums them into the power without a separate op
        fbanks = features.mel_fbanks.detach().cpu().repeat_interleave(2, dim=0)
        self.register_buffer("mel_fbanks_re_im", fbanks)
        dct = features.dct
        self.register_buffer("dct", None if dct is None else dct.detach().cpu().clone())
        scale, shift = _affine(model.input_norm, features.out_features)
        self.register_buffer("norm_scale", scale.cpu())  # (F,)
        self.register_buffer("norm_shift", shift.cpu())  # (F,)
        self.conv_weight, self.conv_bias, self.conv_kernel, self.conv_stride = [], [], [], []
        self.conv_padding, self.pool_size, self.pool_stride, self.program = [], [], [], []
        self.act: nn.Module = nn.Identity()
        for i, block in enumerate(model.frontend.layers):
            for module in block:
                self._add(f"{i}", module)
        # (C_out, C_in, k) -> (C_in, k, C_out) -> (C_in * k, C_out): rows in the order of a
        # frequency window's (C_in, k) values, as `_conv` lays them out
        self.conv_weight = [w.permute(1, 2, 0).reshape(-1, w.shape[0]) for w in self.conv_weight]

    def _add(self, name: str, module: nn.Module) -> None:
        after_conv = self.program[-1:] == [("conv", len(self.conv_weight) - 1)]
        if isinstance(module, nn.Conv2d) and module.kernel_size[1] == 1:
            weight = module.weight.detach().cpu()[..., 0]  # (C_out, C_in, k, 1) -> (C_out, C_in, k)
            bias = torch.zeros(len(weight)) if module.bias is None else module.bias.detach().cpu()
            self.program.append(("conv", len(self.conv_weight)))
            self.conv_weight.append(weight.clone())
            self.conv_bias.append(bias.clone())
            self.conv_kernel.append(module.kernel_size[0])
            self.conv_stride.append(module.stride[0])
            self.conv_padding.append(module.padding[0])
        elif isinstance(module, nn.BatchNorm2d) and after_conv:
            # Folded into the convolution before it (exact in eval mode).
            scale, shift = _affine(module, module.num_features)
            self.conv_weight[-1] = self.conv_weight[-1] * scale.cpu()[:, None, None]
            self.conv_bias[-1] = self.conv_bias[-1] * scale.cpu() + shift.cpu()
        elif type(module) in ACTIVATIONS.values():
            # one activation module serves every block (TorchScript cannot index a module list)
            if not isinstance(self.act, (nn.Identity, type(module))):
                raise ValueError(f"front-end layer {name}: mixed activations are unknown here")
            self.act = module
            self.program.append(("act", 0))
        elif (
            isinstance(module, nn.MaxPool2d)
            and not module.ceil_mode
            and module.padding in (0, (0, 0))
        ):
            size, stride = module.kernel_size, module.stride
            self.program.append(("pool", len(self.pool_size)))
            self.pool_size.append(size[0] if isinstance(size, tuple) else size)
            self.pool_stride.append(stride[0] if isinstance(stride, tuple) else stride)
        elif not isinstance(module, nn.Dropout):  # dropout is the identity in eval mode
            raise ValueError(f"front-end layer {name} holds {type(module).__name__}, unknown here")

    def forward(self, span: Tensor) -> tuple[Tensor, Tensor]:
        """(S,) samples, S = (T - 1) * hop + n_fft -> (T, F) features (before the input norm)
        and (T, D) embeddings of every whole frame."""
        features = self.featurize(span)
        return features, self.embed(features)

    def featurize(self, span: Tensor) -> Tensor:
        """(S,) samples, S = (T - 1) * hop + n_fft -> (T, F) features (before the input norm)."""
        frames = span.unfold(0, self.n_fft, self.hop) * self.window  # (T, n_fft)
        spec = torch.fft.rfft(frames)  # (T, n_fft/2+1)
        # (T, n_fft/2+1) complex -> (T, n_fft/2+1, 2) -> (T, 2 (n_fft/2+1)): re^2, im^2 pairs
        squares = torch.view_as_real(spec).square().flatten(1)
        features = torch.log(torch.addmm(self.log_floor, squares, self.mel_fbanks_re_im))
        dct = self.dct
        if dct is not None:
            features = torch.matmul(features, dct)  # (T, F) @ (F, n_mfcc)
        return features

    def embed(self, features: Tensor) -> Tensor:
        """(T, F) features -> (T, D) frame embeddings: the input norm and the front end."""
        x = torch.addcmul(self.norm_shift, features, self.norm_scale).unsqueeze(-1)  # (T, F, 1)
        for op, i in self.program:
            if op == "conv":
                x = self._conv(x, i)
            elif op == "pool":
                # (T, F', C) -> windows (T, F'', C, p) -> (T, F'', C)
                x = x.unfold(-2, self.pool_size[i], self.pool_stride[i]).amax(-1)
            else:
                x = self.act(x)
        # (T, F', C') -> (T, C', F') -> (T, C'*F'): the front end's (C', F') order
        return x.transpose(-2, -1).flatten(-2)

    def _conv(self, x: Tensor, i: int) -> Tensor:
        """Convolution `i` of the front end over frequency: (T, F, C) -> (T, F', C')."""
        pad = self.conv_padding[i]
        # (T, F, C) -> (T, F + 2 pad, C) -> windows (T, F', C, k) -> (T * F', C * k)
        if pad > 0:
            zeros = x.new_zeros(x.shape[0], pad, x.shape[2])  # (T, pad, C)
            x = torch.cat([zeros, x, zeros], 1)  # cheaper than F.pad here
        windows = x.unfold(1, self.conv_kernel[i], self.conv_stride[i])
        n_frames, n_freq = windows.shape[0], windows.shape[1]
        windows = windows.reshape(n_frames * n_freq, -1)
        x = torch.addmm(self.conv_bias[i], windows, self.conv_weight[i])
        return x.view(n_frames, n_freq, -1)  # (T * F', C') -> (T, F', C')


def compiled(module: nn.Module, *example: Tensor) -> nn.Module:
    """`module` compiled by TorchScript and frozen, else compiled only, else `module` itself:
    the first form that runs on `example` (all compute the same). Freezing resolves the branches
    on settings and weights once (3-9% faster at one frame per call), but a frozen module cannot
    run everywhere (not under `torch.jit.optimized_execution(False)`, for one).
    """
    forms: list[nn.Module] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        try:
            forms.append(torch.jit.script(module.eval()))
            forms.insert(0, torch.jit.freeze(forms[0]))
        except Exception:  # noqa: BLE001 (any compiler failure: the forms left are exact too)
            pass
    for form in forms:
        try:
            with torch.inference_mode():
                form(*example)
            return form
        except Exception:  # noqa: BLE001 (this form cannot run here: the next one is exact too)
            continue
    return module


def _affine(norm: nn.Module, size: int) -> tuple[Tensor, Tensor]:
    """(scale, shift) of an eval-mode batch norm (or identity) as fixed per-channel vectors."""
    if isinstance(norm, nn.Identity):
        return torch.ones(size), torch.zeros(size)
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.running_var is None:
        raise ValueError(f"cannot fold {type(norm).__name__} into an affine map")
    scale = torch.rsqrt(norm.running_var + norm.eps)
    shift = -norm.running_mean * scale
    if norm.affine:
        shift = shift * norm.weight + norm.bias
        scale = scale * norm.weight
    return scale.detach(), shift.detach()


class FrameStep(nn.Module):
    """`SpeechClassifier.infer` for one stream, fused: samples -> features, posteriors, state.

    `FrameBatchPath`, then the LSTM, the pooling's streaming form and the classifier, in one
    TorchScript call (`compiled`), exact up to float rounding. Chunks of up to
    `max_step_frames` frames run the LSTM step by step with matrix-vector products (nn.LSTM's
    oneDNN kernel reorders its weights on every call, which dwarfs one frame's work); longer
    chunks call nn.LSTM's fused kernel.

    Args:
        model: a float eval-mode classifier with a unidirectional nn.LSTM (see `usable`).
        max_step_frames: longest chunk (in frames) run step by step.
    """

    w_stacked: list[Tensor]
    bias: list[Tensor]
    lstm_weights: list[Tensor]

    def __init__(self, model: SpeechClassifier, max_step_frames: int = 4) -> None:
        if not self.usable(model):
            raise ValueError(
                "FrameStep needs a float, unidirectional nn.LSTM and an nn.Linear classifier; "
                "stream other models with SpeechClassifier.infer"
            )
        super().__init__()
        lstm, classifier = model.head.lstm, model.head.classifier

        def gate_order(w: Tensor) -> Tensor:
            i, f, g, o = w.detach().cpu().chunk(4, 0)  # nn.LSTM's gate blocks
            return torch.cat([i, f, o, g], 0)

        layers = range(lstm.num_layers)
        self.path = FrameBatchPath(model)
        # Step form: the transposed input and hidden weights stacked, (D_l + H, 4H), with the
        # gates reordered to (i, f, o, g) so that one sigmoid call covers three gates.
        self.w_stacked = [
            torch.cat(
                [gate_order(getattr(lstm, f"weight_{kind}_l{k}")).T for kind in ("ih", "hh")]
            ).contiguous()
            for k in layers
        ]
        self.bias = [
            gate_order(getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}"))
            if lstm.bias
            else torch.zeros(4 * lstm.hidden_size)
            for k in layers
        ]
        self.lstm_weights = [w.detach().cpu().clone() for w in lstm._flat_weights]
        self.lstm_bias, self.num_layers = bool(lstm.bias), lstm.num_layers
        self.hidden, self.max_step_frames = lstm.hidden_size, max_step_frames
        weight = classifier.weight.detach().cpu().T.contiguous()  # (K, H) -> (H, K)
        self.register_buffer("classifier_weight", weight)
        self.register_buffer("classifier_bias", classifier.bias.detach().cpu().clone())
        # "mean" and "attention": one product gives each frame's score and logits, (H, 1 + K);
        # "mean" scores every frame 0
        self.pooling: str = model.head.pooling
        attention = model.head.attention
        if attention is None:
            score_weight, score_bias = torch.zeros(self.hidden, 1), torch.zeros(1)
        else:
            score_weight = attention.weight.detach().cpu().T  # (1, H) -> (H, 1)
            score_bias = attention.bias.detach().cpu()
        self.register_buffer("pool_weight", torch.cat([score_weight, weight], 1))  # (H, 1 + K)
        self.register_buffer("pool_bias", torch.cat([score_bias, self.classifier_bias]))

    @staticmethod
    def usable(model: SpeechClassifier) -> bool:
        """A plain float LSTM (not quantized, no projection, batch first, one direction) and a
        float linear classifier."""
        lstm, classifier = model.head.lstm, model.head.classifier
        return (
            type(lstm) is nn.LSTM
            and not lstm.bidirectional
            and lstm.proj_size == 0
            and lstm.batch_first
            and lstm.weight_ih_l0.dtype == torch.float32
            and type(classifier) is nn.Linear
            and classifier.bias is not None
        )

    def forward(
        self, span: Tensor, h: Tensor, c: Tensor, log_total: Tensor, pooled: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(S,) samples of T whole frames, S = (T - 1) * hop + n_fft, and the state before them
        -> (T, F) features, (T, K) posteriors and the state after the last frame. The state is
        `LSTMHead.infer`'s: h, c (L, 1, H), log_total (1, 1), pooled (1, K) ("last" passes the
        last two through)."""
        features, x = self.path(span)  # (T, F), (T, D)
        if x.shape[0] > self.max_step_frames:
            # nn.LSTM's fused kernel on (T, D) -> (1, T, D), one batch-first sequence
            out = torch.lstm(
                x[None], [h, c], self.lstm_weights, self.lstm_bias, self.num_layers,
                0.0, False, False, True,
            )  # fmt: skip
            x, h, c = out[0][0], out[1], out[2]  # (1, T, H) -> (T, H); (L, 1, H) each
        else:
            x, h, c = self._steps(x, h, c)
        if self.pooling == "last":
            logits = torch.addmm(self.classifier_bias, x, self.classifier_weight)  # (T, K)
        else:
            scored = torch.addmm(self.pool_bias, x, self.pool_weight)  # (T, 1 + K)
            rows: list[Tensor] = []
            for t in range(x.shape[0]):
                # (1, 1) score and (1, K) logits of frame t
                pooled, log_total = pool_frame(
                    scored[t : t + 1, :1], scored[t : t + 1, 1:], log_total, pooled
                )
                rows.append(pooled)
            logits = rows[0] if len(rows) == 1 else torch.cat(rows, 0)  # T x (1, K) -> (T, K)
        return features, logits.softmax(-1), h, c, log_total, pooled

    def _steps(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The stacked LSTM frame by frame: (T, D) x, (L, 1, H) h and c -> (T, H), h, c."""
        hs = [h[layer] for layer in range(self.num_layers)]  # L x (1, H)
        cs = [c[layer] for layer in range(self.num_layers)]
        n = self.hidden
        outputs: list[Tensor] = []
        for t in range(x.shape[0]):
            inputs = x[t : t + 1]  # (1, D)
            for layer in range(self.num_layers):
                # [x_t, h_{t-1}] @ [W_ih; W_hh]: one matrix-vector product per layer and frame
                stacked = torch.cat([inputs, hs[layer]], 1)  # (1, D_l + H)
                gates = torch.addmm(self.bias[layer], stacked, self.w_stacked[layer])  # (1, 4H)
                ifo = torch.sigmoid(gates[:, : 3 * n])  # the three sigmoid gates at once
                cs[layer] = torch.addcmul(
                    ifo[:, n : 2 * n] * cs[layer], ifo[:, :n], torch.tanh(gates[:, 3 * n :])
                )
                hs[layer] = ifo[:, 2 * n :] * torch.tanh(cs[layer])  # (1, H)
                inputs = hs[layer]
            outputs.append(inputs)
        output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, 0)
        return output, torch.stack(hs, 0), torch.stack(cs, 0)  # L x (1, H) -> (L, 1, H)
