"""Exact streaming inference: audio chunks in, per-frame class posteriors out.

The front end convolves over frequency only and the features are not centred, so frame t of
the CNN output is a function of samples [t * hop, t * hop + n_fft) alone. A unidirectional LSTM
then needs nothing from the future: carrying the STFT's overlap (the last n_fft - hop samples)
and the LSTM's (h, c) between chunks gives, chunk by chunk, the same frames and posteriors as
the offline model on the whole recording (up to float rounding; the tests check 1e-5).

The per-frame posterior at frame t is softmax(classifier(LSTM output at t)), what "last"
pooling computes at a clip's final frame: at the last frame of a clip it equals the softmax of
the offline logits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechcnn.features import LogMelFeatures
from speechcnn.frontend import ACTIVATIONS
from speechcnn.model import LSTMHead, SpeechClassifier


class NotStreamableError(ValueError):
    """A model whose outputs at frame t depend on frames after t."""


def check_streamable(model: SpeechClassifier) -> None:
    """Raise `NotStreamableError` saying why `model` cannot stream and what to change."""
    head = model.head
    if not isinstance(head, LSTMHead):
        raise NotStreamableError(f"streaming needs an LSTMHead, got {type(head).__name__}")
    reasons = []
    if head.bidirectional:
        reasons.append(
            "the LSTM is bidirectional: its backward direction reads the recording from the "
            "end, so no output exists until the audio has ended"
        )
    if head.pooling != "last":
        reasons.append(
            f"pooling is {head.pooling!r}: it pools over the whole utterance, so the logits "
            "exist only once the utterance is over"
        )
    if reasons:
        raise NotStreamableError(
            "model cannot stream: "
            + "; ".join(reasons)
            + ". Train with net.bidirectional=false and net.pooling=last (recipe flags "
            "--model.net.bidirectional false --model.net.pooling last, or the preset "
            "recipes/presets/streaming.yaml): its logits are the "
            "LSTM's output at the final frame, and the streamer emits that for every frame. "
            "(`speechcnn spot --mode window` works with any model.)"
        )


@torch.no_grad()
def offline_posteriors(model: SpeechClassifier, waveforms: Tensor) -> Tensor:
    """Per-frame class posteriors of whole recordings, the reference the streamer must equal.

    Args:
        model: a streamable classifier (unidirectional LSTM, "last" pooling), in eval mode.
        waveforms: (B, S) float waveforms, S >= n_fft.

    Returns:
        (B, T, K) softmax of the classifier applied to the LSTM output at every frame.
    """
    check_streamable(model)
    outputs, _ = model.head.lstm(model.embed(waveforms))  # (B, T, H)
    return model.head.classifier(outputs).softmax(dim=-1)  # (B, T, K)


class FrameBatchPath(nn.Module):
    """The features, input norm and front end of an eval-mode model, with frames as the batch.

    Every stage is frame-local, so the T frames of a chunk can be a batch of T one-frame
    inputs: the STFT is an rfft of (T, n_fft) windowed frames, the (k, 1) convolutions become
    1-D convolutions over frequency, and batch norms are folded into fixed affine maps (their
    eval-mode form). Same function as the modules (within float rounding; the streaming tests
    check it), with a fraction of the per-call overhead that matters at 10-100 ms chunks.

    Args:
        model: the classifier (eval mode); its front end must be the `FrequencyCNN` layout
            (conv, optional batch norm, activation, optional max pool, optional dropout).

    Raises:
        ValueError: the front end holds a module this path does not know.
    """

    def __init__(self, model: SpeechClassifier) -> None:
        super().__init__()
        features: LogMelFeatures = model.features
        self.n_fft, self.hop = features.n_fft, features.hop_length
        self.log_floor = features.log_floor
        self.register_buffer("window", features.window.clone())
        self.register_buffer("mel_fbanks", features.mel_fbanks.clone())  # (n_fft/2+1, F)
        self.register_buffer("dct", None if features.dct is None else features.dct.clone())
        scale, shift = _affine(model.input_norm, features.out_features)
        self.register_buffer("norm_scale", scale)  # (F,)
        self.register_buffer("norm_shift", shift)  # (F,)
        self.steps: list[tuple[str, object]] = []
        for i, block in enumerate(model.frontend.layers):
            for module in block:
                self.steps.append(self._step(f"{i}", module))
        # Fold each batch norm into the convolution before it (exact in eval mode).
        folded: list[tuple[str, object]] = []
        for kind, value in self.steps:
            if kind == "bn" and folded and folded[-1][0] == "conv":
                weight, bias, stride, padding = folded[-1][1]
                scale, shift = value
                bias = shift if bias is None else bias * scale + shift
                folded[-1] = ("conv", (weight * scale[:, None, None], bias, stride, padding))
            else:
                folded.append((kind, value))
        self.steps = folded
        for j, (kind, value) in enumerate(self.steps):
            if kind == "conv":  # buffers, so .to() and state moves carry them
                self.register_buffer(f"conv{j}_weight", value[0].detach().clone())
                bias = value[1] if value[1] is not None else torch.zeros(value[0].shape[0])
                self.register_buffer(f"conv{j}_bias", bias.detach().clone())

    @staticmethod
    def _step(name: str, module: nn.Module) -> tuple[str, object]:
        if isinstance(module, nn.Conv2d) and module.kernel_size[1] == 1:
            weight = module.weight.detach()[..., 0]  # (C_out, C_in, k, 1) -> (C_out, C_in, k)
            bias = None if module.bias is None else module.bias.detach()
            return "conv", (weight, bias, module.stride[0], module.padding[0])
        if isinstance(module, nn.BatchNorm2d):
            return "bn", _affine(module, module.num_features)
        if isinstance(module, tuple(ACTIVATIONS.values())):
            return "act", module
        if isinstance(module, nn.MaxPool2d) and not module.ceil_mode and module.padding == 0:
            size = module.kernel_size
            stride = module.stride
            size = size[0] if isinstance(size, tuple) else size
            stride = stride[0] if isinstance(stride, tuple) else stride
            return "pool", (size, stride)
        if isinstance(module, nn.Dropout):
            return "skip", None
        raise ValueError(f"front-end layer {name} holds {type(module).__name__}, unknown here")

    def forward(self, span: Tensor) -> tuple[Tensor, Tensor]:
        """Features and embeddings of every whole frame of a span of samples.

        Args:
            span: (S,) samples, S = (T - 1) * hop + n_fft.

        Returns:
            (T, F) features (before the input norm) and (T, D) frame embeddings.
        """
        frames = span.unfold(0, self.n_fft, self.hop) * self.window  # (T, n_fft)
        spec = torch.fft.rfft(frames)  # (T, n_fft/2+1)
        power = spec.real.square() + spec.imag.square()
        features = torch.log(torch.matmul(power, self.mel_fbanks) + self.log_floor)  # (T, F)
        if self.dct is not None:
            features = torch.matmul(features, self.dct)  # (T, F) @ (F, n_mfcc)
        x = torch.addcmul(self.norm_shift, features, self.norm_scale).unsqueeze(1)  # (T, 1, F)
        for j, (kind, value) in enumerate(self.steps):
            if kind == "conv":
                _, _, stride, padding = value
                weight, bias = getattr(self, f"conv{j}_weight"), getattr(self, f"conv{j}_bias")
                x = F.conv1d(x, weight, bias, stride, padding)  # (T, C, F')
            elif kind == "act":
                x = value(x)
            elif kind == "pool":
                x = F.max_pool1d(x, value[0], value[1])
        # (T, C', F') -> (T, C'*F'): the front end's (C', F') flattening order
        return features, x.flatten(1)


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


def _lstm_steps(
    x: Tensor, h: Tensor, c: Tensor, w_ih: list[Tensor], w_hh: list[Tensor], bias: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """A stacked unidirectional LSTM, step by step, with gates stored as (i, f, o, g).

    Args:
        x: (T, D) inputs; h, c: (L, H) states; w_ih[l]: (D_l, 4H), w_hh[l]: (H, 4H) and
            bias[l]: (4H,), the transposed nn.LSTM weights with the gate blocks reordered.

    Returns:
        (T, H) top-layer outputs and the new (L, H) h and c.
    """
    hidden = h.shape[1]
    hs: list[Tensor] = []
    cs: list[Tensor] = []
    for layer in range(len(w_ih)):
        gates_x = torch.addmm(bias[layer], x, w_ih[layer])  # (T, 4H), all steps at once
        h_l = h[layer : layer + 1]  # (1, H)
        c_l = c[layer : layer + 1]
        outputs: list[Tensor] = []
        for t in range(x.shape[0]):
            gates = torch.addmm(gates_x[t : t + 1], h_l, w_hh[layer])  # (1, 4H)
            ifo = torch.sigmoid(gates[:, : 3 * hidden])  # one call for the three sigmoid gates
            c_l = torch.addcmul(
                ifo[:, hidden : 2 * hidden] * c_l,
                ifo[:, :hidden],
                torch.tanh(gates[:, 3 * hidden :]),
            )
            h_l = ifo[:, 2 * hidden :] * torch.tanh(c_l)
            outputs.append(h_l)
        x = torch.cat(outputs, 0)  # (T, H), the next layer's input
        hs.append(h_l)
        cs.append(c_l)
    return x, torch.cat(hs, 0), torch.cat(cs, 0)


_SCRIPTED_STEPS: list = []


def _scripted_lstm_steps() -> object:
    """`_lstm_steps` compiled by TorchScript (less per-op overhead), or plain if that fails."""
    if not _SCRIPTED_STEPS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice
                _SCRIPTED_STEPS.append(torch.jit.script(_lstm_steps))
        except Exception:  # noqa: BLE001 (any compiler failure: the Python loop is the same math)
            _SCRIPTED_STEPS.append(_lstm_steps)
    return _SCRIPTED_STEPS[0]


class StepLSTM:
    """The model's float nn.LSTM for chunks of few frames, where nn.LSTM's fixed per-call cost
    (oneDNN reorders the weights on every call) dwarfs the work; longer chunks use nn.LSTM.

    Both are the same recurrence, so the choice changes results only by float rounding.
    """

    def __init__(self, lstm: nn.LSTM, max_frames: int = 4) -> None:
        def gate_order(w: Tensor) -> Tensor:
            i, f, g, o = w.detach().chunk(4, 0)  # nn.LSTM's gate blocks
            return torch.cat([i, f, o, g], 0)

        layers = range(lstm.num_layers)
        self.w_ih = [gate_order(getattr(lstm, f"weight_ih_l{k}")).T.contiguous() for k in layers]
        self.w_hh = [gate_order(getattr(lstm, f"weight_hh_l{k}")).T.contiguous() for k in layers]
        self.bias = [
            gate_order(getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}"))
            if lstm.bias
            else torch.zeros(4 * lstm.hidden_size)
            for k in layers
        ]
        self.lstm = lstm
        self.max_frames = max_frames
        self.steps = _scripted_lstm_steps()

    @staticmethod
    def usable(lstm: nn.Module) -> bool:
        """A plain float LSTM (not quantized, no projection, batch first, one direction)."""
        return (
            type(lstm) is nn.LSTM
            and not lstm.bidirectional
            and lstm.proj_size == 0
            and lstm.batch_first
            and lstm.weight_ih_l0.dtype == torch.float32
        )

    def __call__(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """nn.LSTM's contract, one stream: (1, T, D), (h, c) of (L, 1, H) -> (1, T, H), (h, c)."""
        if x.shape[1] > self.max_frames:
            return self.lstm(x, state)
        if state is None:
            zeros = torch.zeros(self.lstm.num_layers, self.lstm.hidden_size)
            h, c = zeros, zeros
        else:
            h, c = state[0][:, 0], state[1][:, 0]  # (L, 1, H) -> (L, H)
        out, h, c = self.steps(x[0], h, c, self.w_ih, self.w_hh, self.bias)
        return out.unsqueeze(0), (h.unsqueeze(1), c.unsqueeze(1))  # (1, T, H); (L, 1, H)


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


class Streamer:
    """Stateful streaming classifier over one audio stream.

    Push chunks of any size (1 sample to minutes); each call returns the frames the chunk
    completed. Samples that do not yet complete a frame, and the n_fft - hop samples that the
    next frame shares with this one, are kept for the next call; the LSTM state is carried.

    Args:
        model: a trained `SpeechClassifier` with a unidirectional LSTM and "last" pooling
            (put in eval mode and left there; the streamer never trains).
        max_frames_per_step: frames sent through the front end at once (bounds memory for
            very long chunks; any value gives the same result).

    Raises:
        NotStreamableError: the model's outputs depend on future frames (see the message).
    """

    def __init__(self, model: SpeechClassifier, max_frames_per_step: int = 1000) -> None:
        check_streamable(model)
        if max_frames_per_step <= 0:
            raise ValueError(f"max_frames_per_step must be positive, got {max_frames_per_step}")
        self.model = model.eval()
        features = model.features
        self.sample_rate: int = features.sample_rate
        self.n_fft: int = features.n_fft
        self.hop: int = features.hop_length
        self.max_frames_per_step = max_frames_per_step
        self.num_classes: int = model.head.classifier.out_features
        self._path = FrameBatchPath(model)
        lstm = model.head.lstm
        self._lstm = StepLSTM(lstm) if StepLSTM.usable(lstm) else lstm
        self.reset()

    def reset(self) -> None:
        """Forget the stream: no pending samples, zero LSTM state, frame count 0."""
        self._pending = torch.zeros(0)
        self._state: tuple[Tensor, Tensor] | None = None
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
        # samples that did not yet fill a frame. clone() so the chunk's storage can be freed.
        self._pending = pending[start:].clone()
        if not feats:
            n_feat = self.model.features.out_features
            return StreamStep(torch.zeros(n_feat, 0), torch.zeros(0, self.num_classes), first)
        return StreamStep(torch.cat(feats, dim=1), torch.cat(posts, dim=0), first)

    def _frames(self, span: Tensor) -> tuple[Tensor, Tensor]:
        """Features (F, T) and posteriors (T, K) of the frames that `span` (S,) holds exactly."""
        head = self.model.head
        features, embedded = self._path(span)  # (T, F), (T, D)
        outputs, self._state = self._lstm(embedded.unsqueeze(0), self._state)  # (1, T, H)
        posteriors = head.classifier(outputs[0]).softmax(dim=-1)  # (T, K)
        return features.T, posteriors  # (T, F) -> (F, T)


def stream_posteriors(
    model: SpeechClassifier, samples: Tensor | np.ndarray, chunk_samples: int = 16000
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
    "FrameBatchPath",
    "NotStreamableError",
    "StreamStep",
    "StepLSTM",
    "Streamer",
    "check_streamable",
    "offline_posteriors",
    "stream_posteriors",
]
