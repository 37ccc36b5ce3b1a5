"""Exact streaming inference: audio chunks in, per-frame class posteriors out.

The front end convolves over frequency only and the features are not centred, so frame t of
the CNN output is a function of samples [t * hop, t * hop + n_fft) alone. A unidirectional LSTM
then needs nothing from the future: carrying the STFT's overlap (the last n_fft - hop samples)
and the LSTM's (h, c) between chunks gives, chunk by chunk, the same frames and posteriors as
the offline model on the whole recording (up to float rounding; the tests check 1e-5).

The posterior at frame t is the model's posterior for the clip of frames 0..t (since the
stream began or was reset), so at a clip's last frame it equals the offline posterior of the
whole clip. Each pooling has a streaming form (`LSTMHead.prefix_logits` is the reference):
"last" classifies the LSTM output at t; "mean" and "attention" carry a running softmax-weighted
mean (`pool_frame`, `prefix_pool`). The classifier is linear and the weights sum to 1, so the
pooled vector's logits are the weighted mean of every frame's logits: the stream carries the
K pooled logits and the log of the weights' total, not the LSTM's H outputs.
"last" suits endless streams; "mean" and "attention" pool over everything since the last reset,
so they suit one utterance at a time (push-to-talk, or a reset per detected utterance).
"""

# No `from __future__ import annotations`: TorchScript needs the class-level attribute
# annotations of FrameBatchPath and FrameStep as real types, not strings.

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechcnn.features import LogMelFeatures
from speechcnn.frontend import ACTIVATIONS
from speechcnn.model import Classifier, LSTMHead, SpeechClassifier


class NotStreamableError(ValueError):
    """A model whose outputs at frame t depend on frames after t."""


def check_streamable(model: Classifier) -> None:
    """Raise `NotStreamableError` saying why `model` cannot stream and what to change."""
    for member in model.members():
        _check_member(member)


def _check_member(model: SpeechClassifier) -> None:
    head = model.head
    if not isinstance(head, LSTMHead):
        raise NotStreamableError(f"streaming needs an LSTMHead, got {type(head).__name__}")
    reasons = []
    if head.bidirectional:
        reasons.append(
            "the LSTM is bidirectional: its backward direction reads the recording from the "
            "end, so no output exists until the audio has ended"
        )
    if reasons:
        raise NotStreamableError(
            "model cannot stream: "
            + "; ".join(reasons)
            + ". Train with net.bidirectional=false (recipe flag "
            "--model.net.bidirectional false; the recipe's default is unidirectional): every "
            "pooling then has a streaming form, and the streamer emits at each frame the "
            "posterior of the audio so far. (`speechcnn spot --mode window` works with any model.)"
        )


@torch.no_grad()
def offline_posteriors(model: Classifier, waveforms: Tensor) -> Tensor:
    """Per-frame class posteriors of whole recordings, the reference the streamer must equal.

    Args:
        model: a streamable classifier (unidirectional LSTMs), in eval mode.
        waveforms: (B, S) float waveforms, S >= n_fft.

    Returns:
        (B, T, K) posteriors; row t is the model's posterior for the frames 0..t (an
        ensemble's: its members' mean).
    """
    check_streamable(model)
    posteriors = []
    for member in model.members():
        outputs, _ = member.head.lstm(member.embed(waveforms))  # (B, T, H)
        posteriors.append(member.head.prefix_logits(outputs).softmax(dim=-1))  # (B, T, K)
    return torch.stack(posteriors).mean(dim=0)  # (M, B, T, K) -> (B, T, K)


def pool_frame(
    score: Tensor, values: Tensor, log_total: Tensor, pooled: Tensor
) -> tuple[Tensor, Tensor]:
    """One frame's step of a running softmax-weighted mean.

    With L = log sum_u exp(s_u) and P = sum_u exp(s_u - L) v_u over the frames so far, a new
    frame (s, v) takes P to P + sigmoid(s - L) (v - P) and L to s + softplus(L - s). Nothing
    overflows or underflows to a wrong result, however far apart the scores: a weight that
    underflows is one that rounding would lose anyway.

    Args:
        score: (1,) the frame's score (0 for mean pooling).
        values: (V,) what it adds to the mean (its logits).
        log_total: (1,) L before the frame; -inf at the start of a stream (`empty_pool_state`).
        pooled: (V,) P before the frame (zeros at the start).

    Returns:
        The (V,) mean and the (1,) L after the frame.
    """
    gap = score - log_total
    return torch.lerp(pooled, values, torch.sigmoid(gap)), score + F.softplus(-gap)


def prefix_pool(
    scores: Tensor, values: Tensor, log_total: Tensor, pooled: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """`pool_frame` over a whole chunk at once: the mean after each of its frames.

    The sums are taken relative to the largest score so far, so exp never overflows; a frame's
    weight underflows (and an early row may become 0/0) only when its score is about 87 below
    that largest score, which `FrameStep` rules out by bounding the scores' range.

    Args:
        scores: (T,) the chunk's scores; values: (T, V) its values.
        log_total, pooled: (1,) and (V,), the state before the chunk (see `pool_frame`).

    Returns:
        (T, V) the means after each frame, and the (V,) mean and (1,) L after the last.
    """
    top = torch.maximum(log_total, scores.max())  # (1,) the largest score so far
    carried = torch.exp(log_total - top)  # (1,) the weight of the frames before the chunk
    weights = torch.exp(scores - top)  # (T,)
    totals = torch.cumsum(weights, 0) + carried  # (T,)
    sums = torch.cumsum(weights[:, None] * values, 0) + carried * pooled  # (T, V)
    means = sums / totals[:, None]
    return means, means[-1], top + torch.log(totals[-1:])


def empty_pool_state(num_values: int) -> tuple[Tensor, Tensor]:
    """The pooling state before a stream's first frame: L = -inf (no weight yet) and a (V,)
    mean of zeros (see `pool_frame`)."""
    return torch.full((1,), float("-inf")), torch.zeros(num_values)


# Largest (F, F' * C') matrix (in elements) for which FrameBatchPath runs the input norm and the
# first convolution as one matrix product: 40 mel bins into 32 channels take 51,200.
MAX_DENSE_FIRST_LAYER = 131072

# Largest possible range of attention scores (max - min) for which FrameStep pools a whole chunk
# at once: exp(-80) is far above float32's smallest normal number (about exp(-87)), so no
# frame's weight underflows. Wider ranges pool frame by frame, where nothing can underflow.
MAX_CHUNK_SCORE_RANGE = 80.0


class FrameBatchPath(nn.Module):
    """The features, input norm and front end of an eval-mode model, with frames as the batch.

    Every stage is frame-local, so the T frames of a chunk can be a batch of T one-frame
    inputs: the STFT is an rfft of (T, n_fft) windowed frames, and batch norms are folded into
    fixed affine maps (their eval-mode form). Each (k, 1) convolution is one matrix product
    over the frequency windows of all T frames (im2col, in a (T, F, C) layout): for a frame or
    a few, PyTorch's convolution picks an unblocked kernel that costs several times more.
    Same function as the modules (within float rounding; the streaming tests check it), with a
    fraction of the per-call overhead that matters at 10-100 ms chunks.
    TorchScript compiles it (see `FrameStep`). The weights are copies on the CPU, taken when
    it is built.

    Args:
        model: the classifier (eval mode); its front end must be the `FrequencyCNN` layout
            (conv, optional batch norm, activation, optional max pool, optional dropout).

    Raises:
        ValueError: the front end holds a module this path does not know.
    """

    conv_weight: list[Tensor]  # (C_in * k, C_out) each once built, (M, ...) once stacked
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
        self.conv_weight, self.conv_bias, self.conv_kernel = [], [], []
        self.conv_stride, self.conv_padding = [], []
        self.pool_size, self.pool_stride, self.program = [], [], []
        self.activation = ""
        self.members = 1  # > 1 after `stack_members`
        for i, block in enumerate(model.frontend.layers):
            for module in block:
                self._add(f"{i}", module)
        # (C_out, C_in, k) -> (C_in, k, C_out) -> (C_in * k, C_out): rows in the order of a
        # frequency window's (C_in, k) values, as `forward` lays them out
        self.conv_weight = [w.permute(1, 2, 0).reshape(-1, w.shape[0]) for w in self.conv_weight]
        # A first convolution right after the input norm is an affine map of the features,
        # (F,) -> (F' * C'): when small, one dense (F, F' * C') matrix is cheaper than the
        # norm, padding and windows it replaces (their per-operation overhead dominates).
        n_freq = features.out_features
        self.first_dense = self.program[:1] == [("conv", 0)] and (
            n_freq * self.conv_bias[0].shape[0] * n_freq <= MAX_DENSE_FIRST_LAYER
        )
        self.register_buffer("first_matrix", torch.zeros(0, 0))
        self.register_buffer("first_bias", torch.zeros(0))
        if self.first_dense:
            normed_basis = torch.diag(self.norm_scale).unsqueeze(2)  # (F, F, 1): scale_f e_f
            linear = self._conv(normed_basis, 0) - self.conv_bias[0]  # (F, F', C')
            self.first_matrix = linear.flatten(1)  # (F, F', C') -> (F, F' * C')
            offset = self._conv(self.norm_shift[None, :, None], 0)  # (1, F', C')
            self.first_bias = offset.flatten()  # (1, F', C') -> (F' * C',)

    def stack_members(self, paths: list["FrameBatchPath"]) -> None:
        """Make this path run the front ends of several members of one architecture on the
        same features (an ensemble's): their weights stacked, (M, ...), so that each product
        runs for every member at once (`torch.baddbmm`) and `embed` gives (M, T, D). The
        features and the input norm stay this path's, which the members share."""
        convs = range(len(self.conv_weight))
        # M x (C_in * k, C_out) -> (M, C_in * k, C_out); biases (C_out,) -> (M, 1, C_out), as
        # baddbmm adds them to each row
        self.conv_weight = [torch.stack([p.conv_weight[i] for p in paths]) for i in convs]
        self.conv_bias = [torch.stack([p.conv_bias[i] for p in paths])[:, None] for i in convs]
        self.first_matrix = torch.stack([p.first_matrix for p in paths])  # (M, F, F' * C')
        self.first_bias = torch.stack([p.first_bias for p in paths])[:, None]  # (M, 1, F' * C')
        self.members = len(paths)

    def _add(self, name: str, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d) and module.kernel_size[1] == 1:
            weight = module.weight.detach().cpu()[..., 0]  # (C_out, C_in, k, 1) -> (C_out, C_in, k)
            bias = module.bias
            bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().cpu()
            self.program.append(("conv", len(self.conv_weight)))
            self.conv_weight.append(weight.clone())
            self.conv_bias.append(bias.clone())
            self.conv_kernel.append(module.kernel_size[0])
            self.conv_stride.append(module.stride[0])
            self.conv_padding.append(module.padding[0])
        elif isinstance(module, nn.BatchNorm2d) and self.program[-1:] == [
            ("conv", len(self.conv_weight) - 1)
        ]:
            # Folded into the convolution before it (exact in eval mode).
            scale, shift = _affine(module, module.num_features)
            self.conv_weight[-1] = self.conv_weight[-1] * scale.cpu()[:, None, None]
            self.conv_bias[-1] = self.conv_bias[-1] * scale.cpu() + shift.cpu()
        elif type(module) in ACTIVATIONS.values():
            kind = next(k for k, v in ACTIVATIONS.items() if v is type(module))
            if self.activation not in ("", kind):
                raise ValueError(f"front-end layer {name}: mixed activations are unknown here")
            self.activation = kind
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
        """Features and embeddings of every whole frame of a span of samples.

        Args:
            span: (S,) samples, S = (T - 1) * hop + n_fft.

        Returns:
            (T, F) features (before the input norm) and (T, D) frame embeddings.
        """
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
        """(T, F) features -> (T, D) frame embeddings: the input norm and the front end; (M, T, D),
        each member's, after `stack_members`."""
        if self.first_dense:
            # the input norm and the first convolution in one product (see __init__)
            n_channels = self.conv_bias[0].shape[-1]
            if self.members == 1:
                x = torch.addmm(self.first_bias, features, self.first_matrix)  # (T, F' * C')
                x = x.view(x.shape[0], -1, n_channels)  # (T, F'*C') -> (T, F', C')
            else:
                batch = features.expand(self.members, -1, -1)  # (T, F) -> (M, T, F), a view
                x = torch.baddbmm(self.first_bias, batch, self.first_matrix)  # (M, T, F' * C')
                x = x.view(self.members, x.shape[1], -1, n_channels)  # -> (M, T, F', C')
            program = self.program[1:]
        else:
            x = torch.addcmul(self.norm_shift, features, self.norm_scale).unsqueeze(-1)  # (T, F, 1)
            if self.members > 1:
                x = x.expand(self.members, -1, -1, -1)  # (T, F, 1) -> (M, T, F, 1), a view
            program = self.program
        for op, i in program:
            if op == "conv":
                x = self._conv(x, i)
            elif op == "pool":
                # ([M,] T, F', C) -> windows ([M,] T, F'', C, p) -> ([M,] T, F'', C)
                x = x.unfold(-2, self.pool_size[i], self.pool_stride[i]).amax(-1)
            else:
                x = _activate(x, self.activation)
        # ([M,] T, F', C') -> ([M,] T, C', F') -> ([M,] T, C'*F'): the front end's (C', F') order
        return x.transpose(-2, -1).flatten(-2)

    def _conv(self, x: Tensor, i: int) -> Tensor:
        """Convolution `i` of the front end over frequency: (T, F, C) -> (T, F', C'), or every
        member's, (M, T, F, C) -> (M, T, F', C'), after `stack_members`."""
        pad = self.conv_padding[i]
        if self.members == 1:
            # (T, F, C) -> (T, F + 2 pad, C) -> windows (T, F', C, k) -> (T * F', C * k)
            if pad > 0:
                zeros = x.new_zeros(x.shape[0], pad, x.shape[2])  # (T, pad, C)
                x = torch.cat([zeros, x, zeros], 1)  # cheaper than F.pad here
            windows = x.unfold(1, self.conv_kernel[i], self.conv_stride[i])
            n_frames, n_freq = windows.shape[0], windows.shape[1]
            windows = windows.reshape(n_frames * n_freq, -1)
            x = torch.addmm(self.conv_bias[i], windows, self.conv_weight[i])
            return x.view(n_frames, n_freq, -1)  # (T * F', C') -> (T, F', C')
        # the same with the members first: (M, T, F, C) -> windows (M, T * F', C * k)
        if pad > 0:
            zeros = x.new_zeros(x.shape[0], x.shape[1], pad, x.shape[3])  # (M, T, pad, C)
            x = torch.cat([zeros, x, zeros], 2)
        windows = x.unfold(2, self.conv_kernel[i], self.conv_stride[i])
        n_frames, n_freq = windows.shape[1], windows.shape[2]
        windows = windows.reshape(self.members, n_frames * n_freq, -1)
        x = torch.baddbmm(self.conv_bias[i], windows, self.conv_weight[i])  # (M, T * F', C')
        return x.view(self.members, n_frames, n_freq, -1)  # -> (M, T, F', C')


def compiled(module: nn.Module, *example: Tensor) -> nn.Module:
    """`module` compiled by TorchScript and frozen, else compiled only, else `module` itself:
    the first form that runs on `example` (all compute the same, with less interpreter
    overhead in that order).

    Freezing turns the module's settings and weights into constants, so the branches on them
    (pooling, first-layer form, activation, the front end's program) are resolved once: a
    step runs 3-9% faster at one frame per call. A frozen module cannot run everywhere (not
    under `torch.jit.optimized_execution(False)`, for one), hence the trial run.
    """
    for form in _compiled_forms(module.eval()):
        try:
            with torch.inference_mode():
                form(*example)
            return form
        except Exception:  # noqa: BLE001 (this form cannot run here: the next one is exact too)
            continue
    return module


def _compiled_forms(module: nn.Module) -> list[nn.Module]:
    """The frozen and the plain TorchScript forms of `module`, those that compile."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        try:
            scripted = torch.jit.script(module)
        except Exception:  # noqa: BLE001 (any compiler failure: eager is the same math)
            return []
        try:
            return [torch.jit.freeze(scripted), scripted]
        except Exception:  # noqa: BLE001 (freezing is an optimisation)
            return [scripted]


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
    """One stream's whole per-chunk computation: samples -> features, posteriors, stream state.

    `FrameBatchPath`, then the LSTM, the pooling's streaming form and the classifier on the
    CPU, in one TorchScript call
    (`compiled`): at 10-20 ms chunks, the cost of a chunk is mostly the per-operation overhead
    of the Python interpreter, not arithmetic. Chunks of up to `max_step_frames` frames run the
    LSTM step by step with matrix-vector products (nn.LSTM's oneDNN kernel reorders its
    weights on every call, which dwarfs one frame's work); longer chunks call the same fused
    kernel as nn.LSTM. Both are the same recurrence: results differ by float rounding only.

    Args:
        model: a float classifier in eval mode with a unidirectional `nn.LSTM` and a linear
            classifier (see `usable`).
        max_step_frames: longest chunk (in frames) run step by step.
    """

    w_stacked: list[Tensor]
    bias: list[Tensor]
    lstm_weights: list[Tensor]

    def __init__(self, model: SpeechClassifier, max_step_frames: int = 4) -> None:
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
        self.lstm_bias = bool(lstm.bias)
        self.num_layers = lstm.num_layers
        self.hidden = lstm.hidden_size
        self.max_step_frames = max_step_frames
        self.register_buffer("classifier_weight", classifier.weight.detach().cpu().T.contiguous())
        self.register_buffer("classifier_bias", classifier.bias.detach().cpu().clone())
        # "mean" and "attention": one product gives each frame's score and logits, (H, 1 + K);
        # "mean" scores every frame 0
        self.pooling: str = model.head.pooling
        hidden, attention = lstm.hidden_size, model.head.attention
        if attention is None:
            score_weight, score_bias = torch.zeros(hidden, 1), torch.zeros(1)
        else:
            score_weight = attention.weight.detach().cpu().T  # (1, H) -> (H, 1)
            score_bias = attention.bias.detach().cpu()
        weight, bias = classifier.weight.detach().cpu(), classifier.bias.detach().cpu()
        self.register_buffer("pool_weight", torch.cat([score_weight, weight.T], 1))  # (H, 1 + K)
        self.register_buffer("pool_bias", torch.cat([score_bias, bias]))
        # LSTM outputs lie in (-1, 1), so the scores of any two frames differ by at most 2 |w|_1
        score_range = 2 * float(score_weight.abs().sum())
        self.pool_whole_chunk = score_range <= MAX_CHUNK_SCORE_RANGE

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
        """Features and posteriors of every whole frame of `span`, and the new stream state.

        Args:
            span: (S,) samples, S = (T - 1) * hop + n_fft.
            h, c: (L, H) LSTM state before the span's first frame.
            log_total, pooled: (1,) and (K,) pooling state (see `pool_frame`; "mean" and
                "attention" only, passed through by "last").

        Returns:
            (T, F) features, (T, K) posteriors, and the (L, H) h and c and the pooling state
            after the last frame.
        """
        features, x = self.path(span)  # (T, F), (T, D)
        if x.shape[0] > self.max_step_frames:
            x, h, c = _lstm_sequence(x, h, c, self.lstm_weights, self.lstm_bias, self.num_layers)
        else:
            x, h, c = self._steps(x, h, c)
        if self.pooling == "last":
            logits = torch.addmm(self.classifier_bias, x, self.classifier_weight)  # (T, K)
        else:
            scored = torch.addmm(self.pool_bias, x, self.pool_weight)  # (T, 1 + K)
            if x.shape[0] > self.max_step_frames and self.pool_whole_chunk:
                logits, pooled, log_total = prefix_pool(
                    scored[:, 0], scored[:, 1:], log_total, pooled
                )
            else:  # a few frames: fewer operations one by one
                rows: list[Tensor] = []
                for t in range(x.shape[0]):
                    pooled, log_total = pool_frame(scored[t, :1], scored[t, 1:], log_total, pooled)
                    rows.append(pooled)
                # T x (K,) -> (T, K)
                logits = rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows, 0)
        return features, logits.softmax(-1), h, c, log_total, pooled

    def _steps(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The stacked LSTM frame by frame: (T, D), (L, H), (L, H) -> (T, H), (L, H), (L, H)."""
        hs = [h[layer : layer + 1] for layer in range(self.num_layers)]  # L x (1, H)
        cs = [c[layer : layer + 1] for layer in range(self.num_layers)]
        outputs: list[Tensor] = []
        for t in range(x.shape[0]):
            inputs = x[t : t + 1]  # (1, D)
            for layer in range(self.num_layers):
                # [x_t, h_{t-1}] @ [W_ih; W_hh]: one matrix-vector product per layer and frame
                stacked = torch.cat([inputs, hs[layer]], 1)  # (1, D_l + H)
                gates = torch.addmm(self.bias[layer], stacked, self.w_stacked[layer])  # (1, 4H)
                hs[layer], cs[layer] = _lstm_cell(gates, cs[layer], self.hidden)  # (1, H)
                inputs = hs[layer]
            outputs.append(inputs)
        output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, 0)
        return output, torch.cat(hs, 0), torch.cat(cs, 0)


class EnsembleStep(nn.Module):
    """An ensemble's whole per-chunk computation in one compiled call, its members batched.

    The members share the features and the input norm (`EnsembleClassifier`) and have one
    shape, so the STFT and mel energies are computed once and every later product runs for
    all M members at once, as `torch.baddbmm` on their stacked weights: a chunk costs about
    as many operations as one model's `FrameStep`, and at 10-20 ms chunks the number of
    operations, not the arithmetic, is what a chunk costs (see `FrameStep`). Each member
    computes what its own `FrameStep` would (to float rounding); the posteriors are their mean.

    Args:
        members: the ensemble's members (`EnsembleClassifier.members()`); see `batchable`.
        max_step_frames: as `FrameStep`'s.
    """

    w_stacked: list[Tensor]  # (M, D_l + H, 4H) per layer
    bias: list[Tensor]  # (M, 1, 4H) per layer
    lstm_weights: list[list[Tensor]]  # each member's nn.LSTM weights

    def __init__(self, members: list[SpeechClassifier], max_step_frames: int = 4) -> None:
        super().__init__()
        for i, member in enumerate(members):
            if not self.batchable([members[0], member]):
                raise ValueError(
                    f"member {i} cannot be batched with member 0: EnsembleStep needs float "
                    "members (FrameStep.usable) with the same parameter shapes, front-end "
                    "layers and pooling"
                )
        steps = [FrameStep(member, max_step_frames) for member in members]
        first, paths = steps[0], [step.path for step in steps]

        def stacked(tensors: list[Tensor], keep_row: bool = False) -> Tensor:
            # M x (...) -> (M, ...); a bias (N,) -> (M, 1, N), as baddbmm adds it to each row
            out = torch.stack(tensors)
            return out.unsqueeze(1) if keep_row else out

        # the features (shared) and every member's front end, batched
        self.path = first.path
        self.path.stack_members(paths)
        layers = range(first.num_layers)
        self.w_stacked = [stacked([step.w_stacked[k] for step in steps]) for k in layers]
        self.bias = [stacked([step.bias[k] for step in steps], True) for k in layers]
        self.lstm_weights = [step.lstm_weights for step in steps]
        self.lstm_bias, self.num_layers = first.lstm_bias, first.num_layers
        self.hidden, self.max_step_frames = first.hidden, max_step_frames
        self.pooling: str = first.pooling
        self.pool_whole_chunk = all(step.pool_whole_chunk for step in steps)
        # (K, H) -> (H, K) per member, as FrameStep holds it: (M, H, K)
        self.register_buffer("classifier_weight", stacked([s.classifier_weight for s in steps]))
        self.register_buffer("classifier_bias", stacked([s.classifier_bias for s in steps], True))
        self.register_buffer("pool_weight", stacked([step.pool_weight for step in steps]))
        self.register_buffer("pool_bias", stacked([step.pool_bias for step in steps], True))

    @staticmethod
    def batchable(members: list[SpeechClassifier]) -> bool:
        """Float members (`FrameStep.usable`) of one architecture: the same parameter shapes,
        front-end layers and pooling."""

        def layout(model: SpeechClassifier) -> tuple:
            shapes = [tuple(p.shape) for p in model.parameters()]
            return shapes, repr(model.frontend.layers), model.head.pooling

        return all(FrameStep.usable(m) and layout(m) == layout(members[0]) for m in members)

    def forward(
        self, span: Tensor, h: Tensor, c: Tensor, log_total: Tensor, pooled: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Features and averaged posteriors of every whole frame of `span`, and the new state.

        Args:
            span: (S,) samples, S = (T - 1) * hop + n_fft.
            h, c: (M, L, H) each member's LSTM state before the span's first frame.
            log_total, pooled: (M, 1) and (M, K), each member's pooling state (see
                `FrameStep.forward`).

        Returns:
            (T, F) features, (T, K) posteriors (the members' mean), and the members' (M, L, H)
            h and c and (M, 1), (M, K) pooling state after the last frame.
        """
        features = self.path.featurize(span)  # (T, F), the same for every member
        x = self.path.embed(features)  # (M, T, D)
        n_frames = x.shape[1]
        if n_frames > self.max_step_frames:
            outputs: list[Tensor] = []
            hs: list[Tensor] = []
            cs: list[Tensor] = []
            for i, weights in enumerate(self.lstm_weights):
                out, h_i, c_i = _lstm_sequence(
                    x[i], h[i], c[i], weights, self.lstm_bias, self.num_layers
                )
                outputs.append(out)
                hs.append(h_i)
                cs.append(c_i)
            # M x (T, H) -> (M, T, H); M x (L, H) -> (M, L, H)
            x, h, c = torch.stack(outputs), torch.stack(hs), torch.stack(cs)
        else:
            x, h, c = self._steps(x, h, c)
        if self.pooling == "last":
            logits = torch.baddbmm(self.classifier_bias, x, self.classifier_weight)  # (M, T, K)
        else:
            scored = torch.baddbmm(self.pool_bias, x, self.pool_weight)  # (M, T, 1 + K)
            if n_frames > self.max_step_frames and self.pool_whole_chunk:
                rows: list[Tensor] = []
                totals: list[Tensor] = []
                pools: list[Tensor] = []
                for i in range(scored.shape[0]):  # each member's scores have their own range
                    means, last, total = prefix_pool(
                        scored[i, :, 0], scored[i, :, 1:], log_total[i], pooled[i]
                    )
                    rows.append(means)
                    pools.append(last)
                    totals.append(total)
                # M x (T, K) -> (M, T, K); M x (K,) -> (M, K); M x (1,) -> (M, 1)
                logits, pooled, log_total = (
                    torch.stack(rows),
                    torch.stack(pools),
                    torch.stack(totals),
                )
            else:  # a few frames: every member at once, frame by frame
                rows = []
                for t in range(n_frames):
                    pooled, log_total = pool_frame(
                        scored[:, t, :1], scored[:, t, 1:], log_total, pooled
                    )  # (M, K), (M, 1)
                    rows.append(pooled)
                # T x (M, K) -> (M, T, K)
                logits = rows[0].unsqueeze(1) if len(rows) == 1 else torch.stack(rows, 1)
        posteriors = logits.softmax(-1).mean(0)  # (M, T, K) -> (T, K)
        return features, posteriors, h, c, log_total, pooled

    def _steps(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every member's LSTM frame by frame: (M, T, D), (M, L, H) -> (M, T, H), (M, L, H)."""
        hs = [h[:, layer : layer + 1] for layer in range(self.num_layers)]  # L x (M, 1, H)
        cs = [c[:, layer : layer + 1] for layer in range(self.num_layers)]
        outputs: list[Tensor] = []
        for t in range(x.shape[1]):
            inputs = x[:, t : t + 1]  # (M, 1, D)
            for layer in range(self.num_layers):
                stacked = torch.cat([inputs, hs[layer]], 2)  # (M, 1, D_l + H)
                gates = torch.baddbmm(self.bias[layer], stacked, self.w_stacked[layer])
                hs[layer], cs[layer] = _lstm_cell(gates, cs[layer], self.hidden)  # (M, 1, H)
                inputs = hs[layer]
            outputs.append(inputs)
        # T x (M, 1, H) -> (M, T, H)
        output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, 1)
        return output, torch.cat(hs, 1), torch.cat(cs, 1)


def _activate(x: Tensor, kind: str) -> Tensor:
    """The front end's activation `kind` (a key of ACTIVATIONS)."""
    if kind == "relu":
        return torch.relu(x)
    if kind == "gelu":
        return F.gelu(x)
    if kind == "silu":
        return F.silu(x)
    return F.elu(x)


def _lstm_sequence(
    x: Tensor, h: Tensor, c: Tensor, weights: list[Tensor], has_bias: bool, num_layers: int
) -> tuple[Tensor, Tensor, Tensor]:
    """A chunk through nn.LSTM's fused kernel: (T, D) inputs and (L, H) state -> (T, H)
    outputs and the (L, H) state after them."""
    # (T, D) -> (1, T, D), one batch-first sequence; state (L, H) -> (L, 1, H)
    out = torch.lstm(
        x.unsqueeze(0),
        [h.unsqueeze(1), c.unsqueeze(1)],
        weights,
        has_bias,
        num_layers,
        0.0,
        False,
        False,
        True,
    )
    return out[0][0], out[1][:, 0], out[2][:, 0]  # (T, H), (L, H), (L, H)


def _lstm_cell(gates: Tensor, c: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """An LSTM cell's update from its (..., 4H) gates in (i, f, o, g) order and (..., H) cell
    state: the new (..., H) h and c."""
    ifo = torch.sigmoid(gates[..., : 3 * hidden])  # the three sigmoid gates at once
    c = torch.addcmul(
        ifo[..., hidden : 2 * hidden] * c, ifo[..., :hidden], torch.tanh(gates[..., 3 * hidden :])
    )
    return ifo[..., 2 * hidden :] * torch.tanh(c), c


@dataclass
class StreamStep:
    """What one `Streamer.push` produced: the frames completed by the chunk.

    Attributes:
        features: (F, T) log-mel frames (before the input norm), T >= 0.
        posteriors: (T, K) class posteriors at those frames.
        first_frame: index of the first of these frames in the whole stream.
    """

    features: Tensor
    posteriors: Tensor
    first_frame: int


class _MemberStream:
    """One single-model classifier's stream state and compiled step (see `Streamer`)."""

    def __init__(self, model: SpeechClassifier) -> None:
        self.model = model
        self.reset()
        # Float models run whole chunks in one compiled call; others (int8) run the compiled
        # front-end path, then their own LSTM and classifier modules. The trial input: one
        # frame's samples, from the start-of-stream state.
        example = torch.zeros(model.features.n_fft)
        self._step = (
            compiled(FrameStep(model), example, *self._state) if FrameStep.usable(model) else None
        )
        self._path = None if self._step is not None else compiled(FrameBatchPath(model), example)

    def reset(self) -> None:
        """Zero LSTM and pooling state."""
        self._state: tuple[Tensor, Tensor, Tensor, Tensor] = _zero_state(self.model)

    def frames(self, span: Tensor) -> tuple[Tensor, Tensor]:
        """Features (F, T) and posteriors (T, K) of the frames that `span` (S,) holds exactly."""
        if self._step is not None:
            features, posteriors, *state = self._step(span, *self._state)  # (T, F), (T, K)
            self._state = tuple(state)
            return features.T, posteriors  # (T, F) -> (F, T)
        head = self.model.head
        features, embedded = self._path(span)  # (T, F), (T, D)
        # (T, D) -> (1, T, D); state (L, H) -> (L, 1, H), nn.LSTM's layout
        state = (self._state[0].unsqueeze(1), self._state[1].unsqueeze(1))
        outputs, (h, c) = head.lstm(embedded.unsqueeze(0), state)  # (1, T, H)
        logits = head.classifier(outputs[0])  # (T, K)
        log_total, pooled = self._state[2:]
        if head.pooling != "last":
            if head.attention is None:
                scores = logits.new_zeros(logits.shape[0], 1)
            else:
                scores = head.attention(outputs[0])  # (T, 1)
            # one frame at a time: this path makes no assumption on the scores' range
            rows = []
            for score, values in zip(scores, logits, strict=True):
                pooled, log_total = pool_frame(score, values, log_total, pooled)
                rows.append(pooled)
            logits = torch.stack(rows)  # T x (K,) -> (T, K)
        self._state = (h[:, 0], c[:, 0], log_total, pooled)
        return features.T, logits.softmax(dim=-1)  # (T, F) -> (F, T)


def _zero_state(model: SpeechClassifier) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A model's start-of-stream state: (h, c), each (L, H), and the pooling's log total weight
    (1,) and mean logits (K,)."""
    lstm = model.head.lstm
    zeros = torch.zeros(lstm.num_layers, lstm.hidden_size)
    return zeros, zeros, *empty_pool_state(model.head.classifier.out_features)


class _EnsembleStream:
    """A float ensemble's stream state, each member's stacked (M, ...), and its compiled
    `EnsembleStep` (see `Streamer`)."""

    def __init__(self, members: list[SpeechClassifier]) -> None:
        self.members = members
        self.reset()
        example = torch.zeros(members[0].features.n_fft)
        self._step = compiled(EnsembleStep(members), example, *self._state)

    def reset(self) -> None:
        """Zero every member's LSTM and pooling state."""
        states = [_zero_state(member) for member in self.members]
        # M x (h, c, log_total, pooled) -> (M, L, H), (M, L, H), (M, 1), (M, K)
        self._state = tuple(torch.stack(column) for column in zip(*states, strict=True))

    def frames(self, span: Tensor) -> tuple[Tensor, Tensor]:
        """Features (F, T) and averaged posteriors (T, K) of the frames `span` (S,) holds."""
        features, posteriors, *state = self._step(span, *self._state)  # (T, F), (T, K)
        self._state = tuple(state)
        return features.T, posteriors  # (T, F) -> (F, T)


class Streamer:
    """Stateful streaming classifier over one audio stream.

    Push chunks of any size (1 sample to minutes); each call returns the frames the chunk
    completed. Samples that do not yet complete a frame, and the n_fft - hop samples that the
    next frame shares with this one, are kept for the next call; the LSTM state is carried.
    An `EnsembleClassifier` streams its members in one compiled step (`EnsembleStep`: the
    features once, the members batched) and averages their posteriors.

    Args:
        model: a trained `SpeechClassifier` or `EnsembleClassifier` with unidirectional LSTMs
            (put in eval mode and left there; the streamer never trains). With "mean" or
            "attention" pooling, each posterior pools over everything since the last `reset`.
        max_frames_per_step: frames sent through the front end at once (bounds memory for
            very long chunks; any value gives the same result).

    Raises:
        NotStreamableError: the model's outputs depend on future frames (see the message).
    """

    def __init__(self, model: Classifier, max_frames_per_step: int = 1000) -> None:
        check_streamable(model)
        if max_frames_per_step <= 0:
            raise ValueError(f"max_frames_per_step must be positive, got {max_frames_per_step}")
        self.model = model.eval()
        features = model.features
        self.sample_rate: int = features.sample_rate
        self.n_fft: int = features.n_fft
        self.hop: int = features.hop_length
        self.max_frames_per_step = max_frames_per_step
        members = model.members()
        if len(members) > 1 and EnsembleStep.batchable(members):
            self._streams: list[_MemberStream | _EnsembleStream] = [_EnsembleStream(members)]
        else:  # one model, or int8 or unlike members: a stream each, posteriors averaged
            self._streams = [_MemberStream(member) for member in members]
        self.num_classes: int = members[0].head.classifier.out_features
        self._no_features = torch.zeros(features.out_features, 0)  # (F, 0)
        self._no_posteriors = torch.zeros(0, self.num_classes)  # (0, K)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: no pending samples, zero LSTM state, frame count 0."""
        self._pending = torch.zeros(0)
        for stream in self._streams:
            stream.reset()
        self.frames_done = 0
        self.samples_seen = 0

    def frame_end_time(self, frame: int | Tensor | np.ndarray) -> float | Tensor | np.ndarray:
        """Time in seconds of the last sample that frame index `frame` covers (its end)."""
        return (frame * self.hop + self.n_fft) / self.sample_rate

    @torch.inference_mode()
    def push(self, chunk: Tensor | np.ndarray) -> StreamStep:
        """Feed the next samples of the stream.

        Args:
            chunk: (S,) float samples in [-1, 1], S >= 0, at the model's sample rate.

        Returns:
            The frames this chunk completed: features (F, T) and posteriors (T, K).
        """
        chunk = torch.as_tensor(chunk, dtype=torch.float32)
        if chunk.dim() != 1:
            raise ValueError(f"expected a chunk of shape (S,), got {tuple(chunk.shape)}")
        self.samples_seen += chunk.shape[0]
        pending = torch.cat([self._pending, chunk]) if self._pending.numel() else chunk
        n_frames = (
            0 if pending.shape[0] < self.n_fft else (pending.shape[0] - self.n_fft) // self.hop + 1
        )
        first = self.frames_done
        if n_frames == 0:  # most 10 ms chunks of a 20 ms hop: keep the samples, emit nothing
            self._pending = pending
            return StreamStep(self._no_features, self._no_posteriors, first)
        feats, posts = [], []
        start = 0
        while n_frames > 0:
            n = min(n_frames, self.max_frames_per_step)
            span = pending[start : start + (n - 1) * self.hop + self.n_fft]
            f, p = self._frames(span)
            feats.append(f)
            posts.append(p)
            start += n * self.hop
            n_frames -= n
            self.frames_done += n
        # Keep everything from the next frame's first sample on: the STFT overlap, and any
        # samples that did not yet fill a frame. A long chunk is copied out of, so that its
        # storage can be freed; a short one stays referenced (next call's cat copies it).
        rest = pending[start:]
        self._pending = rest.clone() if pending.shape[0] > 4 * self.n_fft else rest
        if len(feats) == 1:
            return StreamStep(feats[0], posts[0], first)
        return StreamStep(torch.cat(feats, dim=1), torch.cat(posts, dim=0), first)

    def _frames(self, span: Tensor) -> tuple[Tensor, Tensor]:
        """Features (F, T) and posteriors (T, K) of the frames that `span` (S,) holds exactly."""
        if len(self._streams) == 1:
            return self._streams[0].frames(span)
        outputs = [stream.frames(span) for stream in self._streams]
        # every member computes the same features; the posteriors are averaged
        posteriors = torch.stack([p for _, p in outputs]).mean(dim=0)  # (M, T, K) -> (T, K)
        return outputs[0][0], posteriors


def stream_posteriors(
    model: Classifier,
    samples: Tensor | np.ndarray,
    chunk_samples: int = 16000,
) -> Tensor:
    """Per-frame posteriors (T, K) of a recording of any length, fed in chunks of `chunk_samples`.

    Memory stays bounded by the chunk size, so hours of audio are fine.
    """
    if chunk_samples <= 0:
        raise ValueError(f"chunk_samples must be positive, got {chunk_samples}")
    streamer = Streamer(model)
    samples = torch.as_tensor(samples, dtype=torch.float32)
    steps = [
        streamer.push(samples[i : i + chunk_samples]) for i in range(0, len(samples), chunk_samples)
    ]
    posts = [s.posteriors for s in steps]
    return torch.cat(posts) if posts else torch.zeros(0, streamer.num_classes)


__all__ = [
    "EnsembleStep",
    "FrameBatchPath",
    "FrameStep",
    "NotStreamableError",
    "StreamStep",
    "Streamer",
    "check_streamable",
    "empty_pool_state",
    "offline_posteriors",
    "pool_frame",
    "prefix_pool",
    "stream_posteriors",
]
