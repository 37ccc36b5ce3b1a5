"""The classifier, plain nn.Modules: waveform -> log-mel -> frequency-only CNN -> LSTM -> logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechcnn.features import LogMelFeatures
from speechcnn.frontend import FrequencyCNN

POOLINGS = ("last", "mean", "attention")

# A stream's carried state: LSTM (h, c), each (L, B, H); the pooling's log total weight (B, 1)
# and pooled logits (B, K) (unused by "last" pooling).
StreamState = tuple[Tensor, Tensor, Tensor, Tensor]


def pool_frame(
    score: Tensor, values: Tensor, log_total: Tensor, pooled: Tensor
) -> tuple[Tensor, Tensor]:
    """One frame's step of a running softmax-weighted mean: the frame's (..., 1) score (0 for
    mean pooling) and (..., V) values (its logits), and the (..., 1) L and (..., V) P before it
    -> P and L after it.

    With L = log sum_u exp(s_u) and P = sum_u exp(s_u - L) v_u over the frames so far (-inf and
    zeros at the start), a new frame (s, v) takes P to P + sigmoid(s - L) (v - P) and L to
    s + softplus(L - s). Nothing overflows or underflows to a wrong result, however far apart
    the scores: a weight that underflows is one that rounding would lose anyway.
    """
    gap = score - log_total
    return torch.lerp(pooled, values, torch.sigmoid(gap)), score + F.softplus(-gap)


def empty_pool_state(batch: int, num_values: int) -> tuple[Tensor, Tensor]:
    """`pool_frame`'s state before a stream's first frame: (B, 1) L = -inf, (B, V) zeros."""
    return torch.full((batch, 1), float("-inf")), torch.zeros(batch, num_values)


class LSTMHead(nn.Module):
    """LSTM over frame embeddings, pooled over time, then a linear classifier.

    A clip gives the same logits alone or zero-padded in a batch with its length: pooling
    masks the padding, and a bidirectional LSTM runs on packed sequences.

    Args:
        in_features: frame embedding size D.
        num_classes: number of classes K.
        hidden_size: LSTM hidden size H (per direction).
        num_layers: number of stacked LSTM layers.
        bidirectional: run a backward LSTM too (not streamable).
        pooling: "last" (final state), "mean" or "attention" (softmax-weighted) over valid frames.
        dropout: dropout between LSTM layers and before the classifier.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        bidirectional: bool = False,
        pooling: str = "last",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if in_features <= 0 or num_classes <= 1:
            raise ValueError(
                f"need in_features > 0 and num_classes > 1, got {in_features}, {num_classes}"
            )
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError(
                f"hidden_size and num_layers must be positive, got {hidden_size}, {num_layers}"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.pooling, self.bidirectional = pooling, bidirectional
        self.lstm = nn.LSTM(
            in_features, hidden_size, num_layers=num_layers, batch_first=True,
            bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0,
        )  # fmt: skip
        out = hidden_size * (2 if bidirectional else 1)
        self.attention = nn.Linear(out, 1) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(out, num_classes)

    @property
    def streamable(self) -> bool:
        """Whether the logits at frame t depend on frames <= t only: a unidirectional LSTM."""
        return not self.bidirectional

    def prefix_logits(self, x: Tensor) -> Tensor:
        """(B, T, D) frame embeddings -> (B, T, K) logits, row t what `forward` gives for the
        clip of frames 0..t: the offline reference that `infer` must equal.

        Needs a unidirectional LSTM, whose output at frame u does not depend on later frames.
        Memory grows as T^2 for "mean" and "attention": for clips, not hours.
        """
        outputs, _ = self.lstm(x)  # (B, T, H)
        pooled = outputs
        if self.pooling != "last":
            n_frames = outputs.shape[1]
            # (t, u): frame u comes after frame t
            future = torch.ones(n_frames, n_frames, dtype=torch.bool, device=x.device).triu(1)
            # (B, T, 1) -> (B, 1, T) -> (B, T, T): row t holds the scores of frames 0..t, -inf after
            scores = self._scores(outputs).transpose(1, 2).masked_fill(future, float("-inf"))
            pooled = scores.softmax(dim=-1) @ outputs  # (B, T, T) @ (B, T, H)
        return self.classifier(self.dropout(pooled))

    def _scores(self, outputs: Tensor) -> Tensor:
        """(B, T, H) LSTM outputs -> (B, T, 1) pooling scores, 0 for "mean" (equal weights)."""
        if self.attention is None:
            return outputs.new_zeros(outputs.shape[:2] + (1,))
        return self.attention(outputs)

    def initial_state(self, batch: int = 1) -> StreamState:
        """The state before a stream's first frame: zero (h, c) and an empty pooling."""
        lstm = self.lstm
        zeros = torch.zeros(lstm.num_layers, batch, lstm.hidden_size)
        log_total, pooled = empty_pool_state(batch, self.classifier.out_features)
        return zeros, zeros.clone(), log_total, pooled

    def infer(self, x: Tensor, state: StreamState) -> tuple[Tensor, StreamState]:
        """(B, T, D) embeddings of a stream's next frames and the `StreamState` before them
        (`initial_state` or the previous call's) -> (B, T, K) `prefix_logits` at them and the
        state after the last.

        "mean" and "attention" carry the pooled logits (`pool_frame`): the classifier is linear
        and the weights sum to 1, so the pooled logits are the weighted mean of the frames'.
        """
        if self.bidirectional:
            raise ValueError("a bidirectional LSTM cannot stream: it reads the audio backwards")
        h, c, log_total, pooled = state
        outputs, (h, c) = self.lstm(x, (h, c))  # (B, T, H)
        logits = self.classifier(outputs)  # (B, T, K)
        if self.pooling != "last":
            scores = self._scores(outputs)  # (B, T, 1)
            rows = []
            for t in range(logits.shape[1]):
                pooled, log_total = pool_frame(scores[:, t], logits[:, t], log_total, pooled)
                rows.append(pooled)
            logits = torch.stack(rows, 1)  # T x (B, K) -> (B, T, K)
        return logits, (h, c, log_total, pooled)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, T, D) frame embeddings, (B,) valid frames per sequence (None: all T) -> (B, K)
        logits."""
        batch, n_frames, _ = x.shape
        mask = None
        if lengths is not None:
            lengths = lengths.clamp(min=1, max=n_frames).to(x.device)
            mask = torch.arange(n_frames, device=x.device) < lengths[:, None]  # (B, T)
        if mask is not None and self.bidirectional:
            # Packed, so that the backward direction starts at each clip's own last frame.
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_out, (h_n, _) = self.lstm(packed)
            outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=n_frames)
        else:
            # One direction: the output at a frame depends on earlier frames only, so the
            # padding after a clip changes none of its valid outputs. Not packing is exact
            # and faster (packed sequences take a slower kernel).
            outputs, (h_n, _) = self.lstm(x)  # (B, T, H*dirs)
        if self.pooling == "last":
            if self.bidirectional:
                # each direction's final state: at the clip's last valid frame (packing) and,
                # backwards, at frame 0
                pooled = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # (B, 2H)
            elif mask is None:
                pooled = h_n[-1]  # (B, H)
            else:  # each clip's last valid frame
                pooled = outputs[torch.arange(batch, device=x.device), lengths - 1]  # (B, H)
        elif self.pooling == "mean":
            if mask is None:
                pooled = outputs.mean(dim=1)
            else:
                weights = mask.to(outputs.dtype)
                pooled = (outputs * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
        else:
            scores = self.attention(outputs).squeeze(-1)  # (B, T, 1) -> (B, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=1)
            pooled = torch.einsum("bt,bth->bh", weights, outputs)
        return self.classifier(self.dropout(pooled))


class SpeechClassifier(nn.Module):
    """Waveforms to class logits: features -> input norm -> FrequencyCNN -> LSTMHead.

    Args:
        features: waveform (B, S) -> (B, F, T) feature extractor.
        frontend: frame-local front end (B, F, T) -> (B, T, D).
        head: sequence classifier (B, T, D) -> (B, K).
        input_norm: batch-normalise each feature bin (a fixed affine map at inference: local).
    """

    def __init__(
        self,
        features: LogMelFeatures,
        frontend: FrequencyCNN,
        head: LSTMHead,
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        if frontend.in_freq != features.out_features:
            raise ValueError(
                f"frontend expects {frontend.in_freq} bins, features give {features.out_features}"
            )
        self.features = features
        self.input_norm = nn.BatchNorm1d(features.out_features) if input_norm else nn.Identity()
        self.frontend, self.head = frontend, head

    def frame_lengths(self, lengths: Tensor | None) -> Tensor | None:
        """(B,) valid samples per clip -> (B,) valid frames per clip."""
        return None if lengths is None else self.features.num_frames(lengths)

    def embed(self, waveforms: Tensor) -> Tensor:
        """(B, S) waveforms -> (B, T, D) frame embeddings, each a function of its frame alone."""
        return self.frontend(self.input_norm(self.features(waveforms)))

    def prefix_logits(self, waveforms: Tensor) -> Tensor:
        """(B, S) waveforms -> (B, T, K) `LSTMHead.prefix_logits`, the reference of `infer`."""
        return self.head.prefix_logits(self.embed(waveforms))

    def infer(self, span: Tensor, state: StreamState) -> tuple[Tensor, Tensor, StreamState]:
        """(B, S) samples of a stream's next T frames, S = (T - 1) * hop + n_fft, and the
        head's state before them (eval mode) -> (B, F, T) features (before the input norm),
        (B, T, K) `LSTMHead.infer` logits and the state after the last frame.

        The features are not centred and the front end is frame-local, so nothing else is
        carried but the n_fft - hop samples the next span shares with this one.
        """
        features = self.features(span)
        logits, state = self.head.infer(self.frontend(self.input_norm(features)), state)
        return features, logits, state

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, S) float waveforms, zero-padded past each clip's (B,) valid samples (None: all
        S) -> (B, K) logits."""
        return self.classify_features(self.features(waveforms), self.frame_lengths(lengths))

    def classify_features(self, features: Tensor, frames: Tensor | None = None) -> Tensor:
        """Everything after the features: (B, F, T) features, (B,) valid frames -> (B, K) logits."""
        return self.head(self.frontend(self.input_norm(features)), frames)


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture hyperparameters of `SpeechClassifier`, as recipes and checkpoints hold them;
    the defaults are the Speech Commands recipe's (recipes/speech_commands.yaml).

    Args:
        n_mels: mel bands of the log-mel features.
        win_ms: STFT window (and FFT) length in milliseconds.
        hop_ms: STFT hop in milliseconds: one frame per hop.
        n_mfcc: keep this many MFCCs of the log-mel instead of the log-mel itself (null: off).
        input_norm: batch-normalise each feature bin before the front end.
        cnn_channels: output channels of each (k, 1) convolution of `FrequencyCNN`.
        cnn_kernels: frequency extent k of each convolution's kernel.
        cnn_strides: frequency stride of each convolution (null: 1 each).
        cnn_pools: (p, 1) max pooling over frequency after each convolution (1: none).
        cnn_dropout: dropout after each convolution block.
        activation: the front end's nonlinearity: relu, gelu, silu or elu.
        lstm_hidden: hidden units H of each LSTM layer.
        lstm_layers: stacked LSTM layers.
        bidirectional: a bidirectional LSTM (false: unidirectional, which streams exactly).
        pooling: how frames become one clip vector: last, mean or attention.
        head_dropout: dropout before the classifier layer.
    """

    n_mels: int = 40
    win_ms: float = 40.0
    hop_ms: float = 20.0
    n_mfcc: int | None = None
    input_norm: bool = True
    cnn_channels: tuple[int, ...] = (32, 64, 64)
    cnn_kernels: tuple[int, ...] = (5, 5, 3)
    cnn_strides: tuple[int, ...] | None = None
    cnn_pools: tuple[int, ...] = (2, 2, 2)
    cnn_dropout: float = 0.1
    activation: str = "relu"
    lstm_hidden: int = 176
    lstm_layers: int = 1
    bidirectional: bool = False
    pooling: str = "attention"
    head_dropout: float = 0.1


def build_classifier(
    config: ClassifierConfig, num_classes: int, sample_rate: int = 16000
) -> SpeechClassifier:
    """The full model for `num_classes` classes of audio at `sample_rate` Hz."""
    c = config
    features = LogMelFeatures(sample_rate, c.n_mels, c.win_ms, c.hop_ms, n_mfcc=c.n_mfcc)
    frontend = FrequencyCNN(
        features.out_features, c.cnn_channels, c.cnn_kernels, c.cnn_strides, c.cnn_pools,
        dropout=c.cnn_dropout, activation=c.activation,
    )  # fmt: skip
    head = LSTMHead(
        frontend.out_features, num_classes, c.lstm_hidden, c.lstm_layers, c.bidirectional,
        c.pooling, c.head_dropout,
    )  # fmt: skip
    return SpeechClassifier(features, frontend, head, input_norm=c.input_norm)
