"""The data check: each kind of bad file planted in a synthetic Speech Commands folder is found,
fixable ones are fixed on load, unusable ones skipped and named, and training still runs."""

import json

import numpy as np
import pytest
import soundfile as sf
from fakes import make_speech_commands, word_tone, write_wav

from speechcnn.data import check as check_module
from speechcnn.data.layouts import main
from speechcnn.data.speech_commands import SpeechCommandsDataModule, check_speech_commands

RATE = 16000


def plant_bad_files(root):
    """One file per problem kind in the `yes` folder (all training split); returns kind -> path."""
    rng = np.random.default_rng(5)
    tone = word_tone("yes", RATE, 1.0, rng)
    bad = {}

    def path(kind):
        bad[kind] = root / "yes" / f"{kind}_nohash_0.wav"
        return bad[kind]

    path("unreadable").write_bytes(b"this is not audio at all" * 10)
    full = write_wav(path("truncated"), tone, RATE).read_bytes()
    bad["truncated"].write_bytes(full[: len(full) // 2])
    sf.write(path("empty"), np.zeros(0, dtype=np.float32), RATE, subtype="PCM_16")
    write_wav(path("silent"), np.zeros(RATE, dtype=np.float32), RATE)
    nan = tone.copy()
    nan[100] = np.nan
    sf.write(path("non_finite"), nan, RATE, subtype="FLOAT")
    write_wav(path("sample_rate"), word_tone("yes", 44100, 1.0, rng), 44100)
    write_wav(path("channels"), np.stack([tone, tone], axis=1), RATE)
    write_wav(path("too_long"), word_tone("yes", RATE, 3.0, rng), RATE)
    return bad


@pytest.fixture
def bad_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHCNN_CACHE_DIR", str(tmp_path / "cache"))
    root = make_speech_commands(tmp_path / "sc", clips_per_word=8)
    bad = plant_bad_files(root)
    lists = {
        name: (root / name).read_text() for name in ("validation_list.txt", "testing_list.txt")
    }
    overlap = lists["validation_list.txt"].split()[0]
    (root / "testing_list.txt").write_text(
        lists["testing_list.txt"] + f"{overlap}\nno/gone_nohash_0.wav\n"
    )
    return root, bad, overlap


def test_every_planted_problem_is_found(bad_root):
    root, bad, overlap = bad_root
    report = check_speech_commands(root)
    for kind, path in bad.items():
        assert kind in report.files[str(path)]["problems"], kind
    assert report.unusable_paths() == {
        str(bad[k]) for k in ("unreadable", "truncated", "empty", "silent", "non_finite")
    }
    assert report.missing_listed == ["no/gone_nohash_0.wav"]
    assert report.split_overlap == [overlap]
    counts = report.counts()
    assert all(counts[kind] == 1 for kind in bad)  # the clean synthetic clips are not flagged
    assert not report.ok
    details = report.files[str(bad["sample_rate"])]["details"]
    assert details == ["sample rate 44100 Hz, expected 16000 Hz"]


def test_check_data_command_prints_table_and_writes_json(bad_root, tmp_path, capsys):
    root, bad, _ = bad_root
    with pytest.raises(SystemExit) as exit_info:
        main([str(root), "--report", str(tmp_path / "report.json")])
    assert exit_info.value.code == 1  # unusable files: a script can stop on this
    out = capsys.readouterr().out
    assert "problem" in out and "truncated" in out and "resampled on load" in out
    assert str(bad["non_finite"]) in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["counts"]["silent"] == 1 and report["counts"]["split_overlap"] == 1
    assert str(bad["unreadable"]) in report["skipped"]


def test_clean_folder_passes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPEECHCNN_CACHE_DIR", str(tmp_path / "cache"))
    root = make_speech_commands(tmp_path / "sc", clips_per_word=4)
    from speechcnn.cli import main as speechcnn_main

    # through the console entry point; no SystemExit: all well
    speechcnn_main(["check-data", str(root), "--report", str(tmp_path / "r.json")])
    assert capsys.readouterr().out.rstrip().splitlines()[-2] == "OK"


def test_check_is_cached_and_notices_changed_files(bad_root, monkeypatch):
    root, bad, _ = bad_root
    check_speech_commands(root)
    calls = []
    real = check_module.file_facts
    monkeypatch.setattr(check_module, "file_facts", lambda p: calls.append(p) or real(p))
    report = check_speech_commands(root)
    assert calls == []  # nothing re-read
    assert "silent" in report.files[str(bad["silent"])]["problems"]
    write_wav(bad["silent"], word_tone("yes", RATE, 1.0, np.random.default_rng(0)), RATE)
    report = check_speech_commands(root)
    assert [str(p) for p in calls] == [str(bad["silent"])]
    assert str(bad["silent"]) not in report.files


def test_unwritable_cache_still_checks(bad_root, tmp_path, monkeypatch):
    root, bad, _ = bad_root
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would go")
    report = check_speech_commands(root, cache_dir=blocker)
    assert str(bad["empty"]) in report.unusable_paths()


def test_training_skips_and_names_unusable_files(bad_root, caplog):
    import pytorch_lightning as pl

    from speechcnn.model import ClassifierConfig
    from speechcnn.training import SpeechClassifierModule

    root, bad, _ = bad_root
    data = SpeechCommandsDataModule(root=str(root), batch_size=16, cache=False, resident=False)
    net = ClassifierConfig(
        n_mels=16, cnn_channels=(4,), cnn_kernels=(3,), cnn_pools=(2,), lstm_hidden=8, lstm_layers=1
    )
    module = SpeechClassifierModule(data.class_names, net=net, schedule="constant")
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with caplog.at_level("WARNING"):
        trainer.fit(module, datamodule=data)
    assert trainer.current_epoch == 1
    used = set(data.clips["train"].paths)
    for kind in ("unreadable", "truncated", "empty", "silent", "non_finite"):
        assert str(bad[kind]) not in used
        assert str(bad[kind]) in caplog.text  # named in the log
    for kind in ("sample_rate", "channels", "too_long"):
        assert str(bad[kind]) in used  # fixed on load
    assert data.clips["train"].waveforms.shape[1] == RATE


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_missing_or_empty_folder_names_every_layout_not_fsdd_alone(tmp_path, capsys, state):
    root = tmp_path / "data"
    if state == "empty":
        root.mkdir()
    with pytest.raises(SystemExit) as info:
        main([str(root)])
    assert info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{root} {'does not exist' if state == 'missing' else 'is empty'}" in line
    assert "Speech Commands" in line and "class sub-folders" in line and "FSDD" in line
    assert "clone" not in line


def test_a_folder_in_no_layout_says_why_each_layout_failed(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("text")
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "none of the layouts tried" in line
    for why in ("holds no audio files", "not a Speech Commands v0.02 folder", "holds no {digit}"):
        assert why in line


def test_every_fixed_file_is_named_first_of_each_kind_on_screen(bad_root, tmp_path, capsys):
    root, bad, _ = bad_root
    rng = np.random.default_rng(9)
    resampled = [bad["sample_rate"]]
    for i in range(4):  # more 8 kHz files than the screen names
        resampled.append(write_wav(root / "no" / f"rate{i}_nohash_0.wav",
                                   word_tone("no", 8000, 1.0, rng), 8000))  # fmt: skip
    with pytest.raises(SystemExit):
        main([str(root), "--report", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert str(bad["channels"]) in out and str(bad["too_long"]) in out
    assert "resampled on load (sample_rate, 5 files):" in out
    assert "... and 2 more (see the JSON report)" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted(report["fixed"]["sample_rate"]) == sorted(str(p) for p in resampled)
    assert report["fixed"]["channels"] == [str(bad["channels"])]


def test_upper_case_wav_files_are_checked_and_trained_on(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHCNN_CACHE_DIR", str(tmp_path / "cache"))
    root = make_speech_commands(tmp_path / "sc", clips_per_word=4)
    loud = root / "yes" / "upper_nohash_0.WAV"
    write_wav(loud, word_tone("yes", 44100, 1.0, np.random.default_rng(3)), 44100)
    report = check_speech_commands(root)
    assert report.files[str(loud)]["problems"] == ["sample_rate"]
    data = SpeechCommandsDataModule(root=str(root), batch_size=4, cache=False)
    items = data.split_items("train")
    assert loud in [path for path, _ in items]
    from speechcnn.data.fsdd import parse_fsdd_name

    assert parse_fsdd_name("3_theo_7.WAV") == ("3", "theo", 7)
