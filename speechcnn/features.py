"""Waveform -> log-mel (or MFCC) features, computed by torchaudio inside the model.

Frames are not centred: frame t covers samples [t * hop, t * hop + n_fft), a function of its
own samples only, so zero padding changes no frame and a streamer computes the same frames.
"""

from __future__ import annotations

import warnings

import torch
import torchaudio
from torch import Tensor, nn


class LogMelFeatures(nn.Module):
    """Log-mel spectrogram (optionally MFCC) of a batch of waveforms, the same in training and
    evaluation (training-time changes are `speechcnn.augment`'s).

    Args:
        sample_rate: sample rate of the input waveforms in Hz.
        n_mels: number of mel bins F.
        win_ms: analysis window length in milliseconds (also the FFT size).
        hop_ms: hop between frames in milliseconds.
        f_min: lowest mel filter edge in Hz.
        f_max: highest mel filter edge in Hz (None: Nyquist).
        n_mfcc: if set, return this many MFCCs instead of log-mel energies.
        log_floor: added to the mel energies before the log, so silence gives a finite value.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 40,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        f_min: float = 20.0,
        f_max: float | None = None,
        n_mfcc: int | None = None,
        log_floor: float = 1e-6,
    ) -> None:
        super().__init__()
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if n_mels <= 0:
            raise ValueError(f"n_mels must be positive, got {n_mels}")
        if win_ms <= 0 or hop_ms <= 0:
            raise ValueError(f"win_ms and hop_ms must be positive, got {win_ms} and {hop_ms}")
        if n_mfcc is not None and not 0 < n_mfcc <= n_mels:
            raise ValueError(f"n_mfcc must be in 1..n_mels={n_mels}, got {n_mfcc}")
        if log_floor <= 0:
            raise ValueError(f"log_floor must be positive, got {log_floor}")
        f_max = sample_rate / 2 if f_max is None else f_max
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}"
            )

        self.sample_rate, self.n_mels, self.log_floor = sample_rate, n_mels, log_floor
        self.n_fft = round(sample_rate * win_ms / 1000)
        self.hop_length = round(sample_rate * hop_ms / 1000)
        self.out_features = n_mels if n_mfcc is None else n_mfcc

        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        n_freqs = self.n_fft // 2 + 1
        with warnings.catch_warnings():
            # torchaudio only warns about empty filters; the check below refuses them.
            warnings.filterwarnings("ignore", message=".*mel filterbank has all zero values.*")
            fb = torchaudio.functional.melscale_fbanks(
                n_freqs, f_min, f_max, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
            )  # (n_fft/2+1, F)
        empty = int((fb.max(dim=0).values == 0).sum())
        if empty:
            raise ValueError(
                f"n_mels={n_mels} is too many for a {self.n_fft}-point FFT ({n_freqs} frequency "
                f"bins from {f_min:g} to {f_max:g} Hz): {empty} mel filters would be empty; use "
                "fewer n_mels or a longer win_ms"
            )
        self.register_buffer("mel_fbanks", fb, persistent=False)
        dct = None if n_mfcc is None else torchaudio.functional.create_dct(n_mfcc, n_mels, "ortho")
        self.register_buffer("dct", dct, persistent=False)  # (F, n_mfcc)

    def num_frames(self, num_samples: Tensor | int) -> Tensor | int:
        """Number of frames T for clips of `num_samples` samples (0 if shorter than a window)."""
        if isinstance(num_samples, Tensor):
            frames = torch.div(num_samples - self.n_fft, self.hop_length, rounding_mode="floor")
            return frames.add(1).clamp(min=0)
        return max(0, (num_samples - self.n_fft) // self.hop_length + 1)

    def mel_energies(self, waveforms: Tensor) -> Tensor:
        """Power mel spectrogram, before the log: (B, S) waveforms, S >= n_fft -> (B, F, T)."""
        # The STFT always runs in float32: under bf16 autocast its power would lose the
        # quiet bins that the log then turns into large, noisy values.
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            return self.mel(self.power_spectrum(waveforms))

    def power_spectrum(self, waveforms: Tensor) -> Tensor:
        """|STFT|^2 of non-centred frames: (B, S) waveforms, S >= n_fft -> (B, n_fft/2+1, T)."""
        if waveforms.dim() != 2:
            raise ValueError(f"expected waveforms of shape (B, S), got {tuple(waveforms.shape)}")
        if waveforms.shape[-1] < self.n_fft:
            raise ValueError(
                f"clips must have at least n_fft={self.n_fft} samples, got {waveforms.shape[-1]}"
            )
        spec = torch.stft(
            waveforms.float(), self.n_fft, self.hop_length, window=self.window, center=False,
            return_complex=True,
        )  # fmt: skip
        return spec.real.square() + spec.imag.square()  # (B, n_fft/2+1, T)

    def mel(self, power: Tensor) -> Tensor:
        """The mel filterbank: (B, n_fft/2+1, T) power -> (B, F, T) mel energies."""
        # (B, n_fft/2+1, T) -> (B, T, n_fft/2+1) @ (n_fft/2+1, F) -> (B, F, T)
        return torch.matmul(power.transpose(1, 2), self.mel_fbanks).transpose(1, 2)

    def from_mel_energies(self, mel: Tensor) -> Tensor:
        """Log (and DCT, for MFCC) of mel energies: (B, F, T) -> (B, F_out, T)."""
        logmel = torch.log(mel + self.log_floor)
        if self.dct is None:
            return logmel
        # (B, F, T) -> (B, T, F) @ (F, n_mfcc) -> (B, n_mfcc, T)
        return torch.matmul(logmel.transpose(1, 2), self.dct).transpose(1, 2)

    def forward(self, waveforms: Tensor) -> Tensor:
        """(B, S) float waveforms in [-1, 1] -> (B, F, T) log-mel energies (or MFCCs),
        T = 1 + (S - n_fft) // hop_length."""
        return self.from_mel_energies(self.mel_energies(waveforms))
