"""`speechcnn classify`: any format, sample rate and channel count; resampler quality on a tone."""

import dataclasses
import json

import numpy as np
import pytest
import pytorch_lightning as pl
import soundfile as sf
import torch

from speechcnn.classify import (
    ModelFileError,
    classify_files,
    classify_waveforms,
    load_classifier,
    main,
)
from speechcnn.cli import main as cli_main
from speechcnn.data.audio import read_audio
from speechcnn.model import ClassifierConfig
from speechcnn.training import SpeechClassifierModule

CLASSES = ["_silence_", "_unknown_", "yes", "no"]
TINY = ClassifierConfig(
    n_mels=16, cnn_channels=(4, 6), cnn_kernels=(3, 3), cnn_pools=(2, 1), lstm_hidden=8
)


def make_checkpoint(path, net=TINY, seed=0, classes=CLASSES):
    """A checkpoint of a random-weight tiny model, laid out as LightningCLI saves one
    (hyperparameters as plain data plus the CLI's instantiator)."""
    torch.manual_seed(seed)
    module = SpeechClassifierModule(classes, 16000, net=net)
    hparams = {
        "class_names": classes,
        "sample_rate": 16000,
        "net": dataclasses.asdict(net),
        "_instantiator": "pytorch_lightning.cli.instantiate_module",
    }
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": hparams,
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return path


def tone(freq, rate, seconds=1.0, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.repeat(mono[:, None], channels, axis=1).astype(np.float32)  # (S, C)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampler_reproduces_a_known_tone(tmp_path, rate):
    # A 1 kHz stereo tone at `rate` must become the same tone at 16 kHz: compare with the
    # analytic signal away from the edges (where the filter sees the file boundary).
    path = tmp_path / "tone.wav"
    sf.write(path, tone(1000.0, rate, channels=2), rate, subtype="FLOAT")
    out = read_audio(path, 16000)
    assert len(out) == 16000
    expected = tone(1000.0, 16000)[:, 0]
    error = np.abs(out - expected)[800:-800]
    snr_db = 10 * np.log10(np.mean(expected[800:-800] ** 2) / np.mean(error**2))
    assert snr_db > 60, snr_db


def test_resampler_removes_content_above_the_new_nyquist(tmp_path):
    # 11 kHz cannot exist at 16 kHz: a good low-pass leaves it at least 60 dB down instead
    # of folding it to 5 kHz.
    path = tmp_path / "high.wav"
    sf.write(path, tone(11000.0, 44100), 44100, subtype="FLOAT")
    out = read_audio(path, 16000)[800:-800]
    assert np.sqrt(np.mean(out**2)) < 0.5 / np.sqrt(2) * 1e-3


def test_downmix_averages_channels(tmp_path):
    path = tmp_path / "lr.wav"
    left_right = np.stack([np.full(1000, 0.5), np.full(1000, -0.1)], axis=1).astype(np.float32)
    sf.write(path, left_right, 16000, subtype="FLOAT")
    assert np.allclose(read_audio(path, 16000), 0.2)


def test_classify_formats_rates_and_channels(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    base = tone(700.0, 16000)[:, 0]
    files = []
    for name, rate, channels, fmt in [
        ("a.wav", 16000, 1, "WAV"),
        ("b.flac", 44100, 2, "FLAC"),
        ("c.ogg", 48000, 1, "OGG"),
        ("d.wav", 8000, 3, "WAV"),
    ]:
        path = tmp_path / name
        sf.write(path, tone(700.0, rate, channels=channels), rate, format=fmt)
        files.append(str(path))
    assert main([str(ckpt), *files, "--top-k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == files
    loaded = load_classifier(ckpt)
    reference = classify_waveforms(loaded.model, [base])[0]
    for line in lines:
        assert len(line["top"]) == 2
        assert line["top"][0]["prob"] >= line["top"][1]["prob"]
        assert {t["label"] for t in line["top"]} <= set(CLASSES)
    # The 16 kHz mono file is the reference exactly; resampled ones agree closely.
    assert lines[0]["top"][0]["label"] == CLASSES[int(reference.argmax())]
    for line in lines[1:]:
        assert line["top"][0]["label"] == lines[0]["top"][0]["label"]
        assert abs(line["top"][0]["prob"] - lines[0]["top"][0]["prob"]) < 0.02


def test_short_clip_same_alone_or_batched(tmp_path):
    loaded = load_classifier(make_checkpoint(tmp_path / "tiny.ckpt"))
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (100, 5000, 16000, 20000)]
    batched = classify_waveforms(loaded.model, clips)
    for i, clip in enumerate(clips):
        alone = classify_waveforms(loaded.model, [clip])[0]
        assert torch.allclose(alone, batched[i], atol=1e-5)
    assert torch.allclose(batched.sum(-1), torch.ones(4), atol=1e-5)


def test_bad_file_reports_error_and_exit_status(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    results = classify_files(load_classifier(ckpt), [bad])
    assert "cannot read audio" in results[0]["error"]
    with pytest.raises(SystemExit) as info:
        cli_main(["classify", str(ckpt), str(bad)])
    assert info.value.code == 1
    assert "error" in json.loads(capsys.readouterr().out.splitlines()[0])


def test_missing_audio_and_bad_checkpoints_are_named(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    (result,) = classify_files(load_classifier(ckpt), [tmp_path / "gone.wav"])
    assert result["error"] == f"{tmp_path / 'gone.wav'}: no such file"
    not_a_model = tmp_path / "notes.ckpt"
    not_a_model.write_text("not a checkpoint")
    for model, why in [
        (tmp_path / "gone.ckpt", "does not exist"),
        (not_a_model, "not a speechcnn"),
    ]:
        with pytest.raises(ModelFileError, match=why):
            load_classifier(model)
        for command in (["classify", str(model), str(tmp_path / "a.wav")],
                        ["spot", str(model), str(tmp_path / "a.wav")],
                        ["export", str(model), "--out-dir", str(tmp_path / "out")]):  # fmt: skip
            with pytest.raises(SystemExit) as info:
                cli_main(command)
            assert info.value.code == 2  # a usage error with one line, not a traceback
            assert str(model) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["spot", str(ckpt), str(tmp_path / "gone.wav")])
    assert "gone.wav: no such file" in capsys.readouterr().err
