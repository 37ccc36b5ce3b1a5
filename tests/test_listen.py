"""`speechcnn listen`: a file at real-time pace and a (fake) microphone give `spot`'s
detections, with the threshold a calibrated checkpoint holds."""

import dataclasses
import json
import sys

import numpy as np
import pytest
import soundfile as sf
from fakes import FakeSoundDevice
from test_classify import make_checkpoint
from test_streaming import recording

from speechcnn import listen, spotting
from speechcnn.calibration import store_calibration
from speechcnn.classify import load_classifier
from speechcnn.spotting import SpotConfig, posterior_track


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny checkpoint, a 4 s recording and a threshold its track crosses several times."""
    tmp = tmp_path_factory.mktemp("listen")
    ckpt = make_checkpoint(tmp / "tiny.ckpt")
    wave = recording(4.0, seed=6).numpy()
    sf.write(tmp / "talk.flac", wave, 16000)
    model = load_classifier(ckpt).model
    track = posterior_track(model, wave, SpotConfig())
    threshold = round(float(np.quantile(track.posteriors[:, 2:].max(axis=1), 0.6)), 4)
    return ckpt, tmp / "talk.flac", wave, threshold


def output(command, argv, capsys):
    command(argv)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_listen_to_a_file_prints_what_spot_prints(setup, capsys):
    ckpt, audio, _, threshold = setup
    options = ["--threshold", str(threshold), "--refractory-s", "0.1"]
    spotted = output(spotting.main, [str(ckpt), str(audio), *options], capsys)
    assert len(spotted) >= 2
    heard = output(
        listen.main, [str(ckpt), "--input", str(audio), "--speed", "20", *options], capsys
    )
    assert heard == spotted


def test_listen_to_the_microphone(setup, capsys, monkeypatch):
    ckpt, audio, wave, threshold = setup
    fake = FakeSoundDevice(wave)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    options = ["--threshold", str(threshold), "--refractory-s", "0.1"]
    spotted = output(spotting.main, [str(ckpt), str(audio), *options], capsys)
    heard = output(listen.main, [str(ckpt), "--seconds", "4", "--device", "2", *options], capsys)
    assert heard == spotted
    assert fake.opened == [{"samplerate": 16000, "channels": 1, "device": 2}]


def test_a_calibrated_checkpoint_brings_its_threshold(setup, capsys, tmp_path):
    ckpt, audio, _, threshold = setup
    calibrated = tmp_path / "calibrated.ckpt"
    calibrated.write_bytes(ckpt.read_bytes())
    spot = SpotConfig(threshold=threshold, refractory_s=0.1)
    store_calibration(calibrated, {"threshold": threshold, "spot": dataclasses.asdict(spot)})
    assert load_classifier(calibrated).calibration["threshold"] == threshold
    given = ["--threshold", str(threshold), "--refractory-s", "0.1"]
    expected = output(spotting.main, [str(ckpt), str(audio), *given], capsys)
    assert output(spotting.main, [str(calibrated), str(audio)], capsys) == expected
    assert (
        output(listen.main, [str(calibrated), "--input", str(audio), "--speed", "0"], capsys)
        == expected
    )
    # an option still overrides the calibration
    louder = output(spotting.main, [str(calibrated), str(audio), "--threshold", "0.99"], capsys)
    assert louder == []
    # per-keyword thresholds: one out of reach silences that keyword; --threshold replaces all
    names = load_classifier(calibrated).class_names
    heard = {found["keyword"] for found in expected}
    muted = {name: 1.0 for name in heard}
    spot = dataclasses.replace(spot, keyword_thresholds=muted)
    store_calibration(calibrated, {"spot": dataclasses.asdict(spot)})
    assert output(spotting.main, [str(calibrated), str(audio)], capsys) == []
    assert output(spotting.main, [str(calibrated), str(audio), *given], capsys) == expected
    assert heard and heard <= set(names)


def test_without_sounddevice_listen_says_what_to_install(setup, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails
    with pytest.raises(SystemExit) as exit_info:
        listen.main([str(setup[0])])
    assert exit_info.value.code == 2
    assert "pip install 'speechcnn[listen]'" in capsys.readouterr().err.strip().splitlines()[-1]
