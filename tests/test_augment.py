import math

import pytest
import torch

from speechcnn.augment import Augmentation, AugmentConfig, rms, room_impulse_responses
from speechcnn.features import LogMelFeatures

OFF = AugmentConfig(
    time_shift_ms=0.0, gain_db=0.0, noise_prob=0.0, freq_warp=0.0, freq_masks=0, time_masks=0
)


def augment(sample_rate: int = 16000, noise: torch.Tensor | None = None, **changes):
    config = AugmentConfig(**{**OFF.__dict__, **changes})
    return Augmentation(config, sample_rate, noise)


def test_time_shift_and_noise_keep_padding_silent():
    torch.manual_seed(0)
    clean = torch.zeros(4, 1000)
    clean[:, 500] = 1.0
    shifted = augment(1000, time_shift_ms=100.0).waveforms(clean, torch.full((4,), 1000))
    peaks = shifted.argmax(dim=1)
    assert ((peaks - 500).abs() <= 100).all() and (shifted.sum(1) <= 1.0).all()
    noisy = augment(noise=torch.randn(5000), noise_prob=1.0, noise_volume=0.5)
    out = noisy.waveforms(clean, torch.tensor([1000, 1000, 1000, 600]))
    assert (out - clean).abs().sum() > 0
    assert torch.all(out[3, 600:] == 0)


def test_noise_is_mixed_at_a_snr_relative_to_each_clip():
    torch.manual_seed(0)
    clips = torch.randn(256, 1600) * torch.logspace(-3, -0.7, 256)[:, None]  # (B, S), loud to quiet
    lengths = torch.full((256,), 1600)
    mixer = augment(noise=torch.randn(20000) * 0.003, noise_prob=1.0, noise_snr_db=(5.0, 15.0))
    noise = mixer.waveforms(clips, lengths) - clips
    snr = 20 * torch.log10(rms(clips, lengths) / rms(noise, lengths))
    assert snr.min() > 4.5 and snr.max() < 15.5 and snr.std() > 2  # whatever the clip's level
    with pytest.raises(ValueError, match="noise_snr_db"):
        augment(noise_snr_db=(10.0, 0.0))


def test_speed_perturbation_scales_pitch_and_keeps_the_centre():
    torch.manual_seed(0)
    n = 16000
    t = torch.arange(n) / 16000
    tones = torch.sin(2 * torch.pi * 1000.0 * t).repeat(32, 1)  # (B, S)
    change = augment(speed=0.2)
    out = change.waveforms(tones, torch.full((32,), n))
    spectrum = torch.fft.rfft(out, dim=1).abs()  # (B, S/2+1), 1 Hz bins
    freqs = spectrum.argmax(dim=1).float()  # each output is a tone at 1000 Hz x its rate
    assert ((freqs >= 795) & (freqs <= 1205)).all()
    assert freqs.max() - freqs.min() > 100  # rates differ between clips
    click = torch.zeros(8, 1000)
    click[:, 300] = 1.0
    moved = change.waveforms(click, torch.full((8,), 601))
    assert (moved.argmax(dim=1) - 300).abs().max() <= 1
    assert torch.all(moved[:, 601:] == 0)


def test_gain_scales_each_clip_within_its_range():
    torch.manual_seed(0)
    clips = torch.full((64, 100), 0.01)
    out = augment(gain_db=12.0).waveforms(clips, torch.full((64,), 100))
    db = 20 * torch.log10(out[:, 0] / 0.01)  # one gain per clip, the same for all its samples
    assert torch.allclose(out, out[:, :1].expand_as(out))
    assert db.min() >= -12.001 and db.max() <= 12.001 and db.max() - db.min() > 12


def test_mixup_mixes_clips_and_targets_alike():
    torch.manual_seed(0)
    waveforms, lengths, labels = torch.randn(8, 100), torch.full((8,), 100), torch.arange(8)
    mixed, _, targets = augment(mixup_alpha=0.4).mixup(waveforms, lengths, labels)
    (first, lam), (second, rest) = targets
    assert lam + rest == pytest.approx(1.0)
    torch.testing.assert_close(mixed, lam * waveforms + rest * waveforms[second])
    assert augment().mixup(waveforms, lengths, labels)[2] == [(labels, 1.0)]


def test_features_match_the_model_when_spectral_changes_are_off():
    features = LogMelFeatures()
    wave = torch.randn(4, 16000) * 0.1
    torch.testing.assert_close(augment().features(features, wave), features(wave))
    torch.manual_seed(0)
    masked = augment(freq_masks=2, freq_mask_width=8, time_masks=2, time_mask_width=20)
    assert not torch.equal(masked.features(features, wave), features(wave))


def test_freq_warp_moves_formants_within_its_range():
    power = torch.zeros(256, 201, 3)
    power[:, 50] = 1.0  # one spectral peak at bin 50 (2 kHz)
    torch.manual_seed(0)
    peaks = augment(freq_warp=0.2).warp_frequency(power).argmax(dim=1)  # (B, T)
    # Output bin k reads input bin k * alpha, so the peak moves to 50 / alpha.
    assert (peaks >= 50 / 1.2 - 1).all() and (peaks <= 50 / 0.8 + 1).all()
    assert (peaks == peaks[:, :1]).all()  # one factor per clip, the same for every frame
    assert peaks[:, 0].unique().numel() > 10  # clips get different factors


def test_spectral_eq_colours_each_clip_smoothly_within_its_range():
    features = LogMelFeatures(n_mels=40)
    wave = torch.randn(64, 16000) * 0.1
    torch.manual_seed(0)
    # log-mel difference in dB: (B, F, T)
    coloured = augment(spectral_eq_db=6.0).features(features, wave)
    curves = (coloured - features(wave)) * 10 / math.log(10)
    assert (curves - curves[:, :, :1]).abs().max() < 0.05  # the same curve for every frame
    curve = curves[:, :, 0]  # (B, F)
    assert curve.abs().max() <= 6.0 + 0.05 and curve.abs().max() > 2.0
    assert curve.diff(dim=1).abs().max() < 6.0 * math.pi * 6 / 40  # smooth: |d/df| of 3 cosines
    assert curve.std(dim=0).min() > 0.5  # clips get different curves


def test_room_impulse_responses_start_at_the_direct_path_with_unit_energy():
    rooms = room_impulse_responses(4, 16000, (0.3, 0.6))  # (N, L)
    assert rooms.shape[0] == 4 and rooms.shape[1] > 1600  # a tail of at least 0.1 s
    torch.testing.assert_close(rooms.norm(dim=1), torch.ones(4))
    assert (rooms.abs().argmax(dim=1) == 0).all()
    torch.testing.assert_close(rooms, room_impulse_responses(4, 16000, (0.3, 0.6)))


def test_reverberation_smears_a_click_into_a_tail_at_the_clip_level():
    torch.manual_seed(0)
    clicks = torch.zeros(8, 16000)
    clicks[:, 4000] = 0.5
    lengths = torch.tensor([16000] * 7 + [8000])
    wet = augment(reverb_prob=1.0).waveforms(clicks, lengths)
    assert (wet.abs().argmax(dim=1) == 4000).all()  # the word does not move
    tail = wet[:, 4100:8000].abs().amax(dim=1)
    assert (tail > 1e-3).all() and wet[:, :4000].abs().max() < 1e-5  # echoes after only
    torch.testing.assert_close(rms(wet, lengths), rms(clicks, lengths))
    assert (wet[7, 8000:] == 0).all()  # padding stays silent
    half = augment(reverb_prob=0.5).waveforms(clicks.repeat(8, 1), torch.full((64,), 16000))
    dry = (half == clicks[:1]).all(dim=1).float().mean()
    assert 0.2 < dry < 0.8


@pytest.mark.parametrize(
    "changes",
    [{"speed": 1.5}, {"gain_db": -1.0}, {"noise_prob": 2.0}, {"freq_warp": 1.0},
     {"spectral_eq_db": -1.0}, {"time_masks": -1}, {"reverb_prob": 1.5},
     {"reverb_rt60": (0.5, 0.2)}],
)  # fmt: skip
def test_bad_settings_raise_naming_the_value(changes):
    with pytest.raises(ValueError, match=next(iter(changes))):
        augment(**changes)
