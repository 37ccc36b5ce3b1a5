"""Waveform -> log-mel (or MFCC) features, computed by torchaudio inside the model.

Frames are not centred (no reflection padding): frame t covers samples
[t * hop, t * hop + n_fft). That makes every frame a function of its own samples only,
so a clip padded with zeros gives the same frames as the clip alone, and a streamer can
compute the same frames chunk by chunk.
"""

from __future__ import annotations

import math
import warnings

import torch
import torchaudio
from torch import Tensor, nn


class LogMelFeatures(nn.Module):
    """Log-mel spectrogram (optionally MFCC) of a batch of waveforms.

    Args:
        sample_rate: sample rate of the input waveforms in Hz.
        n_mels: number of mel bins F.
        win_ms: analysis window length in milliseconds (also the FFT size).
        hop_ms: hop between frames in milliseconds.
        f_min: lowest mel filter edge in Hz.
        f_max: highest mel filter edge in Hz (None: Nyquist).
        n_mfcc: if set, return this many MFCCs instead of log-mel energies.
        log_floor: added to the mel energies before the log, so silence gives a finite value.
        freq_masks: number of SpecAugment frequency masks applied in training.
        freq_mask_width: maximum width of each frequency mask, in bins.
        time_masks: number of SpecAugment time masks applied in training.
        time_mask_width: maximum width of each time mask, in frames.
        freq_warp: in training, each clip's spectrum is stretched along frequency by a
            factor drawn from [1 - freq_warp, 1 + freq_warp] before the mel filterbank
            (vocal tract length perturbation: the formants of a longer or shorter vocal
            tract, pitch and timing unchanged). 0 turns it off.
        spectral_eq_db: in training, each clip's mel energies are coloured by a random smooth
            curve over frequency, at most +-spectral_eq_db dB (the sum of three cosines along
            the mel axis with random amplitudes; the first is a tilt), as a microphone or room
            would colour them. 0 turns it off.
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
        freq_masks: int = 0,
        freq_mask_width: int = 0,
        time_masks: int = 0,
        time_mask_width: int = 0,
        freq_warp: float = 0.0,
        spectral_eq_db: float = 0.0,
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
        for name, value in [
            ("freq_masks", freq_masks),
            ("freq_mask_width", freq_mask_width),
            ("time_masks", time_masks),
            ("time_mask_width", time_mask_width),
        ]:
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= freq_warp < 1.0:
            raise ValueError(f"freq_warp must be in [0, 1), got {freq_warp}")
        if spectral_eq_db < 0:
            raise ValueError(f"spectral_eq_db must be >= 0, got {spectral_eq_db}")

        self.sample_rate = sample_rate
        self.n_fft = round(sample_rate * win_ms / 1000)
        self.hop_length = round(sample_rate * hop_ms / 1000)
        self.n_mels = n_mels
        self.log_floor = log_floor
        self.out_features = n_mfcc if n_mfcc is not None else n_mels
        self.freq_masks, self.freq_mask_width = freq_masks, freq_mask_width
        self.time_masks, self.time_mask_width = time_masks, time_mask_width
        self.freq_warp = freq_warp
        self.spectral_eq_db = spectral_eq_db

        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        n_freqs = self.n_fft // 2 + 1
        with warnings.catch_warnings():
            # torchaudio only warns about empty filters; the check below refuses them.
            warnings.filterwarnings("ignore", message=".*mel filterbank has all zero values.*")
            fb = torchaudio.functional.melscale_fbanks(
                n_freqs=n_freqs,
                f_min=f_min,
                f_max=f_max,
                n_mels=n_mels,
                sample_rate=sample_rate,
                norm="slaney",
                mel_scale="slaney",
            )  # (n_fft/2+1, F)
        empty = int((fb.max(dim=0).values == 0).sum())
        if empty:
            raise ValueError(
                f"n_mels={n_mels} is too many for a {self.n_fft}-point FFT ({n_freqs} frequency "
                f"bins from {f_min:g} to {f_max:g} Hz): {empty} mel filters would be empty; use "
                "fewer n_mels or a longer win_ms"
            )
        self.register_buffer("mel_fbanks", fb, persistent=False)
        if n_mfcc is not None:
            dct = torchaudio.functional.create_dct(n_mfcc, n_mels, norm="ortho")  # (F, n_mfcc)
            self.register_buffer("dct", dct, persistent=False)
        else:
            self.dct = None

    def num_frames(self, num_samples: Tensor | int) -> Tensor | int:
        """Number of frames T for clips of `num_samples` samples (0 if shorter than a window)."""
        if isinstance(num_samples, Tensor):
            return (
                torch.div(num_samples - self.n_fft, self.hop_length, rounding_mode="floor")
                .add(1)
                .clamp(min=0)
            )
        return max(0, (num_samples - self.n_fft) // self.hop_length + 1)

    def mel_energies(self, waveforms: Tensor) -> Tensor:
        """Power mel spectrogram, before the log.

        Args:
            waveforms: (B, S) float waveforms, S >= n_fft.

        Returns:
            (B, F, T) mel energies.
        """
        if waveforms.dim() != 2:
            raise ValueError(f"expected waveforms of shape (B, S), got {tuple(waveforms.shape)}")
        if waveforms.shape[-1] < self.n_fft:
            raise ValueError(
                f"clips must have at least n_fft={self.n_fft} samples, got {waveforms.shape[-1]}"
            )
        # The STFT always runs in float32: under bf16 autocast its power would lose the
        # quiet bins that the log then turns into large, noisy values.
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            spec = torch.stft(
                waveforms.float(),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                window=self.window,
                center=False,
                return_complex=True,
            )  # (B, n_fft/2+1, T)
            power = spec.real.square() + spec.imag.square()
            if self.training and self.freq_warp > 0:
                power = self.warp_frequency(power)
            # (B, n_fft/2+1, T) -> (B, T, n_fft/2+1) @ (n_fft/2+1, F) -> (B, F, T)
            mel = torch.matmul(power.transpose(1, 2), self.mel_fbanks).transpose(1, 2)
            if self.training and self.spectral_eq_db > 0:
                mel = mel * self.random_eq_gain(mel.shape[0], mel.device).unsqueeze(2)
            return mel

    def random_eq_gain(self, batch: int, device: torch.device) -> Tensor:
        """Power gains (B, F) of random smooth curves over the mel axis, within +-spectral_eq_db.

        Each curve is sum_k a_k cos(pi k (f + 1/2) / F) for k = 1, 2, 3, with a_k drawn per clip
        from [-spectral_eq_db / 3, spectral_eq_db / 3] dB: a tilt and two broad bends, smooth
        enough to colour the spectrum without moving its formants.
        """
        n_freq = self.n_mels
        position = (torch.arange(n_freq, device=device) + 0.5) / n_freq  # (F,)
        orders = torch.arange(1, 4, device=device)  # (3,)
        basis = torch.cos(math.pi * orders[:, None] * position)  # (3, F)
        amplitude = (2 * torch.rand(batch, 3, device=device) - 1) * (self.spectral_eq_db / 3)
        return 10 ** ((amplitude @ basis) / 10)  # (B, 3) @ (3, F) -> (B, F) dB -> power

    def warp_frequency(self, power: Tensor) -> Tensor:
        """Stretch each clip's spectrum along frequency by its own random factor.

        Bin k of the output takes the (linearly interpolated) power at bin k * alpha of the
        input, alpha drawn per clip from [1 - freq_warp, 1 + freq_warp]: alpha > 1 moves
        formants down, as a longer vocal tract would. Bins past Nyquist repeat the last bin.

        Args:
            power: (B, N, T) power spectrogram, N = n_fft / 2 + 1.

        Returns:
            (B, N, T) warped power spectrogram.
        """
        batch, n_bins, n_frames = power.shape
        alpha = 1 + self.freq_warp * (2 * torch.rand(batch, 1, device=power.device) - 1)
        bins = torch.arange(n_bins, device=power.device, dtype=power.dtype)
        position = (bins * alpha).clamp(max=n_bins - 1)  # (B, N)
        low = position.floor().long()
        high = (low + 1).clamp(max=n_bins - 1)
        frac = (position - low)[..., None]  # (B, N) -> (B, N, 1)
        # (B, N) -> (B, N, T): the same source bins for every frame of a clip
        low, high = (index[..., None].expand(-1, -1, n_frames) for index in (low, high))
        return power.gather(1, low) * (1 - frac) + power.gather(1, high) * frac

    def from_mel_energies(self, mel: Tensor) -> Tensor:
        """Log (and DCT, for MFCC) of mel energies: (B, F, T) -> (B, F_out, T)."""
        logmel = torch.log(mel + self.log_floor)
        if self.dct is None:
            return logmel
        # (B, F, T) -> (B, T, F) @ (F, n_mfcc) -> (B, n_mfcc, T)
        return torch.matmul(logmel.transpose(1, 2), self.dct).transpose(1, 2)

    def spec_augment(self, features: Tensor) -> Tensor:
        """SpecAugment frequency and time masks, drawn independently per example: (B, F, T)."""
        batch, n_freq, n_time = features.shape
        keep = torch.ones_like(features, dtype=torch.bool)
        for count, width, size, axis in [
            (self.freq_masks, self.freq_mask_width, n_freq, 1),
            (self.time_masks, self.time_mask_width, n_time, 2),
        ]:
            if count == 0 or width == 0:
                continue
            positions = torch.arange(size, device=features.device)
            for _ in range(count):
                w = torch.randint(0, width + 1, (batch, 1), device=features.device)
                start = (torch.rand(batch, 1, device=features.device) * (size - w + 1)).long()
                masked = (positions >= start) & (positions < start + w)  # (B, size)
                # (B, size) -> (B, size, 1) or (B, 1, size), to broadcast over the other axis
                keep &= ~(masked.unsqueeze(2) if axis == 1 else masked.unsqueeze(1))
        # Masked cells take the example's mean so masks do not add an out-of-range value.
        mean = features.mean(dim=(1, 2), keepdim=True)
        return torch.where(keep, features, mean)

    def forward(self, waveforms: Tensor) -> Tensor:
        """Features of a batch of waveforms.

        Args:
            waveforms: (B, S) float waveforms in [-1, 1].

        Returns:
            (B, F, T) log-mel energies (or MFCCs), T = 1 + (S - n_fft) // hop_length.
        """
        features = self.from_mel_energies(self.mel_energies(waveforms))
        if self.training:
            features = self.spec_augment(features)
        return features
