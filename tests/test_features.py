import math

import librosa
import numpy as np
import pytest
import torch

from speechcnn.features import LogMelFeatures


def test_shapes_and_frame_count():
    features = LogMelFeatures(sample_rate=16000, n_mels=40).eval()
    out = features(torch.randn(3, 16000) * 0.1)
    assert out.shape == (3, 40, 98)  # 1 + (16000 - 400) // 160
    assert features.num_frames(16000) == 98
    assert features.num_frames(torch.tensor([400, 399, 560])).tolist() == [1, 0, 2]


def test_mel_energies_agree_with_librosa():
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    features = LogMelFeatures(sample_rate=16000, n_mels=40, f_min=20.0)
    ours = features.mel_energies(torch.from_numpy(wave)[None])[0].numpy()
    ref = librosa.feature.melspectrogram(
        y=wave, sr=16000, n_fft=400, hop_length=160, win_length=400, window="hann",
        center=False, power=2.0, n_mels=40, fmin=20.0, fmax=8000.0, htk=False, norm="slaney",
    )  # fmt: skip
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-6 * ref.max())


def test_log_is_finite_on_silence_and_mfcc_shape():
    features = LogMelFeatures(n_mfcc=13).eval()
    out = features(torch.zeros(2, 16000))
    assert out.shape == (2, 13, 98)
    assert torch.isfinite(out).all()


def test_spec_augment_only_in_training():
    features = LogMelFeatures(freq_masks=2, freq_mask_width=8, time_masks=2, time_mask_width=20)
    wave = torch.randn(4, 16000) * 0.1
    features.eval()
    assert torch.equal(features(wave), features(wave))
    features.train()
    torch.manual_seed(0)
    assert not torch.equal(features(wave), features.eval()(wave))


def test_freq_warp_moves_formants_within_its_range():
    features = LogMelFeatures(freq_warp=0.2)
    power = torch.zeros(256, 201, 3)
    power[:, 50] = 1.0  # one spectral peak at bin 50 (2 kHz)
    torch.manual_seed(0)
    peaks = features.warp_frequency(power).argmax(dim=1)  # (B, T)
    # Output bin k reads input bin k * alpha, so the peak moves to 50 / alpha.
    assert (peaks >= 50 / 1.2 - 1).all() and (peaks <= 50 / 0.8 + 1).all()
    assert (peaks == peaks[:, :1]).all()  # one factor per clip, the same for every frame
    assert peaks[:, 0].unique().numel() > 10  # clips get different factors


def test_freq_warp_only_in_training():
    features = LogMelFeatures(freq_warp=0.1)
    wave = torch.randn(4, 16000) * 0.1
    assert torch.equal(features.eval()(wave), LogMelFeatures().eval()(wave))
    torch.manual_seed(0)
    assert not torch.allclose(features.train()(wave), LogMelFeatures().train()(wave))


def test_spectral_eq_colours_each_clip_smoothly_within_its_range_in_training_only():
    features = LogMelFeatures(n_mels=40, spectral_eq_db=6.0)
    wave = torch.randn(64, 16000) * 0.1
    plain = LogMelFeatures(n_mels=40).eval()(wave)
    assert torch.equal(features.eval()(wave), plain)
    torch.manual_seed(0)
    # log-mel difference in dB: (B, F, T)
    curves = (features.train()(wave) - plain) * 10 / math.log(10)
    assert (curves - curves[:, :, :1]).abs().max() < 0.05  # the same curve for every frame
    curve = curves[:, :, 0]  # (B, F)
    assert curve.abs().max() <= 6.0 + 0.05 and curve.abs().max() > 2.0
    assert curve.diff(dim=1).abs().max() < 6.0 * math.pi * 6 / 40  # smooth: |d/df| of 3 cosines
    assert curve.std(dim=0).min() > 0.5  # clips get different curves


def test_buffers_move_with_module():
    features = LogMelFeatures()
    names = {name for name, _ in features.named_buffers()}
    assert {"window", "mel_fbanks"} <= names
    assert features.to(torch.float64).mel_fbanks.dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 0},
        {"n_mels": 0},
        {"hop_ms": -1},
        {"n_mfcc": 80},
        {"f_max": 9000.0},
        {"freq_warp": 1.0},
        {"spectral_eq_db": -1.0},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        LogMelFeatures(**kwargs)


def test_empty_mel_filters_are_refused_naming_the_fft_and_its_bins():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torchaudio warning ahead of the error
        with pytest.raises(ValueError) as info:
            LogMelFeatures(16000, n_mels=400, win_ms=40.0)
    message = str(info.value)
    assert "n_mels=400" in message and "640-point FFT" in message and "321" in message
    LogMelFeatures(16000, n_mels=128, win_ms=25.0)  # a dense but valid filterbank
