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
