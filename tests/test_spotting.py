"""Spotting: posterior tracks equal the model on each window, smoothing, threshold, refractory
period, and the `speechcnn spot` command's JSON lines."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from test_classify import CLASSES, make_checkpoint
from test_streaming import recording, tiny_model

from speechcnn.spotting import (
    Detector,
    PosteriorTrack,
    SpotConfig,
    detect,
    detections,
    energy_offsets,
    main,
    posterior_track,
    spot,
)
from speechcnn.streaming import offline_posteriors

NAMES = ["_silence_", "_unknown_", "yes", "no"]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"pooling": "attention"},
        {"pooling": "mean", "bidirectional": True},
    ],
)
def test_window_rows_equal_the_model_on_each_window_alone(overrides):
    model = tiny_model(**overrides)
    wave = recording(0.9, seed=1)
    config = SpotConfig(window_s=0.5, hop_s=0.11, centre_s=None)
    track = posterior_track(model, wave, config, block_windows=2)
    hop, n_fft = model.features.hop_length, model.features.n_fft
    win = model.features.num_frames(8000)
    assert track.ends[-1] == pytest.approx(len(wave) // hop * hop / 16000, abs=0.011)
    for row, end in zip(track.posteriors, track.ends, strict=True):
        stop = round(end * 16000)
        start = stop - ((win - 1) * hop + n_fft)
        with torch.no_grad():
            alone = model(wave[start:stop][None]).softmax(-1)[0].numpy()
        assert np.abs(row - alone).max() <= 1e-5
    assert np.allclose(track.spans, ((win - 1) * hop + n_fft) / 16000)


def test_the_stream_track_is_the_streaming_posteriors():
    model = tiny_model()
    wave = recording(0.8, seed=2)
    track = posterior_track(model, wave, SpotConfig(mode="stream"))
    assert np.abs(track.posteriors - offline_posteriors(model, wave[None])[0].numpy()).max() < 1e-5
    assert track.ends[0] == pytest.approx(0.025) and track.ends[1] == pytest.approx(0.035)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_stream_mode_needs_last_pooling(pooling):
    # Such models stream, but their posterior pools over the whole recording so far.
    with pytest.raises(ValueError, match=f"'{pooling}'.*--mode window"):
        posterior_track(tiny_model(pooling=pooling), recording(0.3), SpotConfig(mode="stream"))


def test_short_recording_gives_one_window():
    track = posterior_track(tiny_model(), torch.zeros(100), SpotConfig(centre_s=None))
    assert track.posteriors.shape == (1, 5)


def synthetic_track(events, n=400, step=0.01):
    """Posteriors that are silence except for (keyword index, first row, last row, level)."""
    posts = np.zeros((n, len(NAMES)))
    posts[:, 0] = 1.0
    for k, first, last, level in events:
        posts[first : last + 1] = (1 - level) / (len(NAMES) - 1)
        posts[first : last + 1, k] = level
    ends = np.arange(n) * step + 0.025
    return PosteriorTrack(posts, ends, np.full(n, 1.0))


def test_detect_threshold_peak_and_refractory():
    track = synthetic_track([(2, 50, 60, 0.95), (3, 100, 110, 0.9), (3, 250, 260, 0.6)])
    config = SpotConfig(threshold=0.8, smooth_s=0.0, refractory_s=0.3)
    found = detect(track, NAMES, config)
    assert [d.keyword for d in found] == ["yes", "no"]
    assert found[0].end == pytest.approx(0.525) and found[0].start == pytest.approx(0.0)
    assert found[0].score == pytest.approx(0.95)
    # A longer refractory period swallows the second keyword 0.5 s after the first.
    assert len(detect(track, NAMES, SpotConfig(threshold=0.8, smooth_s=0, refractory_s=0.6))) == 1
    # A lower threshold finds the weak third one.
    assert len(detect(track, NAMES, SpotConfig(threshold=0.5, smooth_s=0, refractory_s=0.3))) == 3


def test_a_run_reports_its_highest_keyword_not_the_first_to_cross():
    # "no" crosses the threshold first, "yes" takes over and peaks higher in the same run.
    track = synthetic_track([(3, 50, 59, 0.7), (2, 60, 80, 0.95)])
    (found,) = detect(track, NAMES, SpotConfig(threshold=0.6, smooth_s=0.0, refractory_s=1.0))
    assert found.keyword == "yes" and found.score == pytest.approx(0.95)
    assert found.end == pytest.approx(0.625)


def test_keyword_thresholds_replace_the_threshold_for_their_keywords():
    track = synthetic_track([(2, 50, 60, 0.6), (3, 200, 210, 0.7)])
    plain = SpotConfig(threshold=0.65, smooth_s=0.0, refractory_s=0.3)
    assert [d.keyword for d in detect(track, NAMES, plain)] == ["no"]
    own = SpotConfig(threshold=0.65, smooth_s=0.0, refractory_s=0.3,
                     keyword_thresholds={"yes": 0.5, "no": 0.9})  # fmt: skip
    (found,) = detect(track, NAMES, own)
    assert found.keyword == "yes" and found.score == pytest.approx(0.6)
    # In one run the keyword furthest above its own threshold wins: "no" at 0.7 is under 0.9.
    overlap = synthetic_track([(2, 50, 59, 0.6), (3, 60, 80, 0.7)])
    assert [d.keyword for d in detect(overlap, NAMES, own)] == ["yes"]
    with pytest.raises(ValueError, match="threshold of no"):
        SpotConfig(keyword_thresholds={"no": 1.5})


def test_smoothing_suppresses_a_short_spike_and_silence_never_fires():
    track = synthetic_track([(2, 50, 51, 0.99), (1, 200, 260, 0.99)])  # 2-frame spike; unknown
    assert detect(track, NAMES, SpotConfig(threshold=0.8, smooth_s=0.0)) != []
    assert detect(track, NAMES, SpotConfig(threshold=0.8, smooth_s=0.1)) == []
    track = synthetic_track([(1, 200, 260, 0.99)])
    assert detect(track, NAMES, SpotConfig(threshold=0.5, smooth_s=0.0)) == []


def test_energy_offsets_locate_the_sound_in_each_span():
    sr = 16000
    rng = np.random.default_rng(0)
    wave = 1e-3 * rng.standard_normal(3 * sr)  # a steady background
    wave[int(1.3 * sr) : int(1.5 * sr)] += 0.3 * rng.standard_normal(int(0.2 * sr))  # 1.3-1.5 s
    # spans [0.9, 1.9], [1.2, 2.2], [0.6, 1.6]: middles 1.4, 1.7, 1.1; the sound's centre 1.4
    offsets = energy_offsets(wave, sr, np.array([1.9, 2.2, 1.6]), np.full(3, 1.0))
    assert offsets == pytest.approx([0.0, -0.3, 0.3], abs=0.02)
    silent = energy_offsets(np.zeros(sr), sr, np.array([1.0]), np.array([1.0]))
    assert silent == pytest.approx([0.0])


def test_off_centre_windows_never_fire():
    track = synthetic_track([(2, 50, 60, 0.95), (3, 200, 210, 0.95)])
    track.centred = np.ones(400, dtype=bool)
    track.centred[190:220] = False  # "no" only in windows that cut its sound
    found = detect(track, NAMES, SpotConfig(threshold=0.8, smooth_s=0.0, refractory_s=0.3))
    assert [d.keyword for d in found] == ["yes"]


def test_window_tracks_mark_centred_windows_only_when_asked():
    model, wave = tiny_model(), recording(2.0, seed=5)
    track = posterior_track(model, wave, SpotConfig(centre_s=0.15))
    offsets = energy_offsets(wave, 16000, track.ends, track.spans)
    assert np.array_equal(track.centred, np.abs(offsets) <= 0.15)
    assert posterior_track(model, wave, SpotConfig(centre_s=None)).centred is None
    assert posterior_track(model, wave, SpotConfig(mode="stream")).centred is None


@pytest.mark.parametrize(
    "bad",
    [
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"smooth_s": -1},
        {"refractory_s": -0.1},
        {"mode": "batch"},
        {"hop_s": 0},
        {"centre_s": -0.1},
    ],
)
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError, match=str(next(iter(bad.values())))):
        SpotConfig(**bad)


def test_spot_modes_and_command(tmp_path, capsys):
    model = tiny_model()
    wave = recording(2.0, seed=3)
    names = ["_silence_", "_unknown_", "a", "b", "c"]
    for mode in ("window", "stream"):
        found = spot(model, names, wave, SpotConfig(threshold=0.01, mode=mode))
        assert found and all(d.keyword in names[2:] for d in found)
        assert all(0 <= d.start < d.end <= 2.0 + 1e-6 for d in found)
        gaps = np.diff([d.end for d in found])
        assert (gaps >= 1.0 - 1e-6).all()  # the default 1 s refractory period
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    path = tmp_path / "long.flac"
    sf.write(path, np.tile(recording(1.0, seed=4).numpy(), 3), 16000)
    main([str(ckpt), str(path), "--threshold", "0.01", "--refractory-s", "0.5"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines, "a threshold of 0.01 always fires"
    for line in lines:
        assert set(line) == {"keyword", "start", "end", "score"}
        assert line["keyword"] in CLASSES[2:]


def test_a_track_in_parts_gives_the_detections_of_the_whole():
    events = [(2, 50, 60, 0.95), (3, 64, 70, 0.9), (2, 150, 152, 0.99), (3, 300, 330, 0.85)]
    track = synthetic_track(events)
    config = SpotConfig(threshold=0.7, smooth_s=0.03, refractory_s=0.2)
    whole = detect(track, NAMES, config)
    assert len(whole) == 3  # the second event falls in the first one's refractory period
    rng = np.random.default_rng(0)
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, 400), 12, replace=False))
        detector, found = Detector(NAMES, config, 0.01), []
        for rows in np.split(np.arange(400), cuts):
            part = PosteriorTrack(track.posteriors[rows], track.ends[rows], track.spans[rows])
            found += detector.step(part)
        assert found + detector.finish() == whole


@pytest.mark.parametrize("mode", ["window", "stream"])
def test_detections_as_audio_arrives_equal_spot_on_the_whole(mode):
    model, wave = tiny_model(), recording(4.0, seed=6)
    names = ["_silence_", "_unknown_", "a", "b", "c"]
    track = posterior_track(model, wave, SpotConfig(mode=mode))
    # a threshold that the track crosses several times
    threshold = float(np.quantile(track.posteriors[:, 2:].max(axis=1), 0.6))
    config = SpotConfig(mode=mode, threshold=threshold, refractory_s=0.1, smooth_s=0.05)
    whole = spot(model, names, wave, config)
    assert len(whole) >= 2
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, len(wave)), 40, replace=False))
    live = list(detections(model, names, np.split(wave.numpy(), cuts), config))
    assert [(d.keyword, d.start, d.end) for d in live] == [
        (d.keyword, d.start, d.end) for d in whole
    ]
    assert [d.score for d in live] == pytest.approx([d.score for d in whole], abs=2e-4)
