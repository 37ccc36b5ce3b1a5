"""Training-time augmentation, in one module with one config section (`model.augment`): the
waveform (`waveforms`), then the batch (`mixup`), then the model's own features (`features`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from speechcnn.features import LogMelFeatures


@dataclass(frozen=True)
class AugmentConfig:
    """What training adds to each clip; every field 0 turns that change off. The defaults are
    the Speech Commands recipe's.

    Args:
        speed: play each clip at a rate from [1 - speed, 1 + speed], as sox's `speed` does.
        time_shift_ms: each clip is shifted by up to this many milliseconds either way.
        reverb_prob: probability that a clip is played in a simulated room (before gain/noise).
        reverb_rt60: (low, high) reverberation times in seconds of the simulated rooms.
        gain_db: each clip's level changes by a gain from [-gain_db, gain_db] dB, before noise.
        noise_prob: probability that a clip gets background noise mixed in.
        noise_volume: the noise gain is drawn from [0, noise_volume] (without noise_snr_db).
        noise_snr_db: (low, high): scale the noise instead to an SNR from [low, high] dB.
        mixup_alpha: mix each batch with a shuffled copy of itself, weight from Beta(alpha, alpha).
        freq_warp: stretch each clip's spectrum by a factor from [1 - freq_warp, 1 + freq_warp].
        spectral_eq_db: colour each clip's mel energies by a smooth curve of at most +-this dB.
        freq_masks: SpecAugment frequency masks per clip.
        freq_mask_width: the largest frequency mask, in mel bins.
        time_masks: SpecAugment time masks per clip.
        time_mask_width: the largest time mask, in frames.
    """

    speed: float = 0.0
    time_shift_ms: float = 100.0
    reverb_prob: float = 0.0
    reverb_rt60: tuple[float, float] = (0.2, 0.8)
    gain_db: float = 12.0
    noise_prob: float = 0.8
    noise_volume: float = 0.1
    noise_snr_db: tuple[float, float] | None = None
    mixup_alpha: float = 0.0
    freq_warp: float = 0.1
    spectral_eq_db: float = 0.0
    freq_masks: int = 2
    freq_mask_width: int = 5
    time_masks: int = 2
    time_mask_width: int = 5


ROOMS = 64  # simulated rooms a training run draws from
ROOM_SIZE_M = ((3.0, 3.0, 2.5), (8.0, 6.0, 3.5))  # (low, high) length, width and height
MAX_REFLECTIONS = 20  # image-source order: keeps simulation under a second for all rooms


def room_impulse_responses(
    count: int, sample_rate: int, rt60: tuple[float, float], seed: int = 0
) -> Tensor:
    """(N, L) impulse responses of `count` shoebox rooms (pyroomacoustics' image-source model)
    with reverberation times from `rt60`, a source and a microphone at random places in each.
    Each starts at its direct path, so a word does not move in its clip, and has unit energy."""
    try:
        import pyroomacoustics as pra
    except ImportError as error:
        raise ImportError(
            "reverb_prob > 0 simulates rooms with pyroomacoustics: pip install pyroomacoustics"
        ) from error
    rng = np.random.default_rng(seed)
    responses = []
    while len(responses) < count:
        size = rng.uniform(*ROOM_SIZE_M)
        try:
            absorption, order = pra.inverse_sabine(rng.uniform(*rt60), size)
        except ValueError:
            continue  # that reverberation time cannot happen in a room this large: draw again
        room = pra.ShoeBox(size, fs=sample_rate, materials=pra.Material(absorption),
                           max_order=min(order, MAX_REFLECTIONS))  # fmt: skip
        room.add_source(rng.uniform(0.5, size - 0.5))
        room.add_microphone(rng.uniform(0.5, size - 0.5))
        room.compute_rir()
        response = np.asarray(room.rir[0][0], dtype=np.float32)
        response = response[int(np.argmax(np.abs(response))) :]
        responses.append(response / np.linalg.norm(response))
    out = np.zeros((count, max(len(r) for r in responses)), dtype=np.float32)
    for i, response in enumerate(responses):
        out[i, : len(response)] = response
    return torch.from_numpy(out)


def rms(waveforms: Tensor, lengths: Tensor) -> Tensor:
    """(B, 1) root mean square of each clip over its valid samples, floored at 1e-8."""
    energy = waveforms.square().sum(dim=1, keepdim=True) / lengths[:, None].clamp(min=1)
    return energy.sqrt().clamp(min=1e-8)


class Augmentation(nn.Module):
    """The random changes of `AugmentConfig`, for a whole batch on its device.

    Args:
        config: what to change (see `AugmentConfig`).
        sample_rate: of the waveforms (for the time shift in samples).
        noise: 1-D float tensor of background-noise recordings, concatenated (or `set_noise`).
    """

    def __init__(
        self, config: AugmentConfig, sample_rate: int = 16000, noise: Tensor | None = None
    ) -> None:
        super().__init__()
        c = config
        if not 0.0 <= c.speed < 1.0:
            raise ValueError(f"speed must be in [0, 1), got {c.speed}")
        if not 0.0 <= c.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {c.noise_prob}")
        if not 0.0 <= c.freq_warp < 1.0:
            raise ValueError(f"freq_warp must be in [0, 1), got {c.freq_warp}")
        for name in ("time_shift_ms", "gain_db", "noise_volume", "mixup_alpha", "spectral_eq_db",
                     "freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):  # fmt: skip
            if getattr(c, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(c, name)}")
        if not 0.0 <= c.reverb_prob <= 1.0:
            raise ValueError(f"reverb_prob must be in [0, 1], got {c.reverb_prob}")
        if not (len(c.reverb_rt60) == 2 and 0 < c.reverb_rt60[0] <= c.reverb_rt60[1]):
            raise ValueError(f"reverb_rt60 must be (low, high) seconds > 0, got {c.reverb_rt60}")
        snr = c.noise_snr_db
        if snr is not None and (len(snr) != 2 or snr[0] > snr[1]):
            raise ValueError(f"noise_snr_db must be (low, high) dB, got {snr}")
        self.config = c
        self.speed, self.gain_db = c.speed, c.gain_db
        self.noise_prob, self.noise_volume = c.noise_prob, c.noise_volume
        self.sample_rate = sample_rate
        self.shift_samples = round(sample_rate * c.time_shift_ms / 1000)
        self.register_buffer("noise", torch.zeros(0), persistent=False)
        # (N, L) impulse responses, simulated on first use (not for a model that only infers)
        self.register_buffer("rooms", torch.zeros(0, 0), persistent=False)
        if noise is not None:
            self.set_noise(noise)

    def set_noise(self, noise: Tensor) -> None:
        """Background-noise recordings to mix in: (N,) samples, the recordings concatenated."""
        self.noise = noise.float().flatten().to(self.noise.device)

    def reverberate(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """Play a `reverb_prob` share of the clips in a simulated room, at their own RMS:
        (B, S) -> (B, S)."""
        if self.rooms.numel() == 0:
            rt60 = self.config.reverb_rt60
            rooms = room_impulse_responses(ROOMS, self.sample_rate, rt60)
            self.rooms = rooms.to(waveforms.device)
        batch, n = waveforms.shape
        device = waveforms.device
        # only the chosen clips are convolved: at 0.5 s responses that is most of the cost
        chosen = (torch.rand(batch, device=device) < self.config.reverb_prob).nonzero()[:, 0]
        dry = waveforms[chosen]  # (B', S)
        rooms = self.rooms[torch.randint(len(self.rooms), (len(chosen),), device=device)]
        wet = torchaudio.functional.fftconvolve(dry, rooms)[:, :n]  # (B', S + L - 1) -> (B', S)
        wet = wet * (rms(dry, lengths[chosen]) / rms(wet, lengths[chosen]))
        return waveforms.index_copy(0, chosen, wet)

    def waveforms(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """Speed, time shift, reverberation, level and background noise of a training batch, in
        that order:
        (B, S) float waveforms, (B,) valid samples per clip -> (B, S) waveforms, zero past each
        clip's length."""
        batch, n = waveforms.shape
        device = waveforms.device
        positions = torch.arange(n, device=device)  # (S,)
        valid = positions < lengths[:, None]  # (B, S)
        if self.speed > 0:
            # Each clip resampled about its centre by linear interpolation, so a word in the
            # middle stays there: a faster clip ends early (zeros after), a slower one is cut at
            # the edges. No anti-aliasing filter: at rate 1.1, content above 7.3 kHz folds back,
            # where speech has little energy.
            rate = 1.0 + self.speed * (2.0 * torch.rand(batch, 1, device=device) - 1.0)  # (B, 1)
            centre = (lengths[:, None].to(waveforms.dtype) - 1.0) / 2.0  # (B, 1)
            # (B, S): where output sample s reads
            source = centre + (positions.to(waveforms.dtype) - centre) * rate
            left = source.floor()
            frac = source - left
            left = left.long()
            inside = (left >= 0) & (left < lengths[:, None])  # reads within the clip
            left = left.clamp(0, n - 1)
            # Past the clip's last sample the right neighbour is padding (zero): a faded edge.
            x0 = torch.gather(waveforms, 1, left)
            x1 = torch.gather(waveforms, 1, (left + 1).clamp(max=n - 1))
            waveforms = (x0 + frac * (x1 - x0)) * inside
        if self.shift_samples > 0:
            shift = torch.randint(
                -self.shift_samples, self.shift_samples + 1, (batch, 1), device=device
            )
            source = positions - shift  # (B, S): output sample s reads input sample s - shift
            inside = (source >= 0) & (source < lengths[:, None])
            waveforms = torch.gather(waveforms, 1, source.clamp(0, n - 1)) * inside
        if self.config.reverb_prob > 0:
            waveforms = self.reverberate(waveforms, lengths) * valid
        if self.gain_db > 0:
            # A log-mel shifts by a constant with the level, which the model should not depend on.
            db = self.gain_db * (2.0 * torch.rand(batch, 1, device=device) - 1.0)  # (B, 1)
            waveforms = (waveforms * 10.0 ** (db / 20.0)).clamp(-1.0, 1.0)
        if self.noise.numel() > n and self.noise_prob > 0:
            start = torch.randint(0, self.noise.numel() - n, (batch, 1), device=device)
            noise = self.noise[start + positions] * valid  # (B, S)
            draw = torch.rand(batch, 1, device=device)  # (B, 1)
            if self.config.noise_snr_db is not None:
                low, high = self.config.noise_snr_db
                snr_db = low + (high - low) * draw
                gain = rms(waveforms, lengths) / (rms(noise, lengths) * 10 ** (snr_db / 20))
            else:
                gain = draw * self.noise_volume
            gain = gain * (torch.rand(batch, 1, device=device) < self.noise_prob)
            waveforms = (waveforms + gain * noise).clamp(-1.0, 1.0)
        return waveforms * valid

    def mixup(
        self, waveforms: Tensor, lengths: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor, list[tuple[Tensor, float]]]:
        """Mix the batch with a shuffled copy of itself (`mixup_alpha` > 0) -> (B, S) waveforms,
        (B,) lengths and the (labels, weight) pairs the loss mixes."""
        alpha = self.config.mixup_alpha
        if alpha <= 0:
            return waveforms, lengths, [(labels, 1.0)]
        # Drawn on the CPU generator, so a seed fixes it on every device.
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(len(labels)).to(labels.device)
        waveforms = lam * waveforms + (1.0 - lam) * waveforms[perm]
        lengths = torch.maximum(lengths, lengths[perm])
        return waveforms, lengths, [(labels, lam), (labels[perm], 1.0 - lam)]

    def features(self, features: LogMelFeatures, waveforms: Tensor) -> Tensor:
        """(B, S) float waveforms -> (B, F, T) `features(waveforms)` of the model's feature
        extractor, with frequency warping, random equalisation and SpecAugment."""
        c = self.config
        # The STFT and the mel product run in float32 (see LogMelFeatures.mel_energies).
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            power = features.power_spectrum(waveforms)  # (B, n_fft/2+1, T)
            if c.freq_warp > 0:
                power = self.warp_frequency(power)
            mel = features.mel(power)  # (B, F, T)
            if c.spectral_eq_db > 0:
                mel = mel * self.random_eq_gain(mel.shape[0], mel.shape[1], mel.device)[..., None]
        return self.spec_augment(features.from_mel_energies(mel))

    def random_eq_gain(self, batch: int, n_freq: int, device: torch.device) -> Tensor:
        """Power gains (B, F) of random smooth curves over the mel axis, within +-spectral_eq_db:
        sum_k a_k cos(pi k (f + 1/2) / F), k = 1..3, a_k per clip from +-spectral_eq_db / 3 dB (a
        tilt and two broad bends, which colour the spectrum without moving its formants)."""
        position = (torch.arange(n_freq, device=device) + 0.5) / n_freq  # (F,)
        orders = torch.arange(1, 4, device=device)  # (3,)
        basis = torch.cos(math.pi * orders[:, None] * position)  # (3, F)
        amplitude = (2 * torch.rand(batch, 3, device=device) - 1) * (self.config.spectral_eq_db / 3)
        return 10 ** ((amplitude @ basis) / 10)  # (B, 3) @ (3, F) -> (B, F) dB -> power

    def warp_frequency(self, power: Tensor) -> Tensor:
        """Stretch each clip's spectrum along frequency by its own random factor.

        Bin k of the output takes the (linearly interpolated) power at bin k * alpha of the
        input, alpha drawn per clip from [1 - freq_warp, 1 + freq_warp]: alpha > 1 moves
        formants down, as a longer vocal tract would. Bins past Nyquist repeat the last bin.
        (B, N, T) power spectrogram, N = n_fft / 2 + 1 -> (B, N, T).
        """
        batch, n_bins, n_frames = power.shape
        alpha = 1 + self.config.freq_warp * (2 * torch.rand(batch, 1, device=power.device) - 1)
        bins = torch.arange(n_bins, device=power.device, dtype=power.dtype)
        position = (bins * alpha).clamp(max=n_bins - 1)  # (B, N)
        low = position.floor().long()
        high = (low + 1).clamp(max=n_bins - 1)
        frac = (position - low)[..., None]  # (B, N) -> (B, N, 1)
        # (B, N) -> (B, N, T): the same source bins for every frame of a clip
        low, high = (index[..., None].expand(-1, -1, n_frames) for index in (low, high))
        return power.gather(1, low) * (1 - frac) + power.gather(1, high) * frac

    def spec_augment(self, features: Tensor) -> Tensor:
        """SpecAugment frequency and time masks, drawn independently per example: (B, F, T)."""
        batch, n_freq, n_time = features.shape
        keep = torch.ones_like(features, dtype=torch.bool)
        for count, width, size, axis in [
            (self.config.freq_masks, self.config.freq_mask_width, n_freq, 1),
            (self.config.time_masks, self.config.time_mask_width, n_time, 2),
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
