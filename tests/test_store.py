"""Waveform store: decode once, memory-map after, re-cache on change, atomic on interrupt."""

import os

import numpy as np
import pytest
import torch
from fakes import make_speech_commands, write_wav

import speechcnn.data.clips as clips_module
import speechcnn.data.store as store
from speechcnn.data.clips import decode_clips
from speechcnn.data.store import cached_clips, default_cache_dir


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        samples = (0.2 * rng.standard_normal(1600 - 100 * i)).astype(np.float32)
        items.append((write_wav(root / f"w{i}.wav", samples, 16000), i % 3))
    return root, items


def entries(cache):
    return sorted(p.name for p in cache.iterdir())


def test_cache_matches_decode_and_is_memory_mapped(folder, tmp_path, monkeypatch):
    _, items = folder
    cache = tmp_path / "cache"
    extra = [(np.full(1600, 0.25, np.float32), 0, "_silence_/0")]
    first = cached_clips(items, 16000, 1600, cache, "demo", extra=extra)
    expected = decode_clips(items, 16000, 1600, extra=extra)
    for got in (first,):
        assert torch.equal(got.waveforms, expected.waveforms)
        assert torch.equal(got.lengths, expected.lengths)
        assert torch.equal(got.labels, expected.labels)
        assert got.paths == expected.paths
    assert len(entries(cache)) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached clip was decoded again")

    monkeypatch.setattr(clips_module, "read_audio", no_decoding)
    monkeypatch.setattr(store, "decode_clips", no_decoding)
    again = cached_clips(items, 16000, 1600, cache, "demo", extra=extra)
    assert torch.equal(again.waveforms, expected.waveforms)
    (data,) = cache.glob("demo-*/waveforms.i16")
    if os.path.exists("/proc/self/maps"):  # Linux: the cache file is mapped, not read
        assert str(data.resolve()) in open("/proc/self/maps").read()


def test_changed_file_is_recached(folder, tmp_path):
    _, items = folder
    cache = tmp_path / "cache"
    before = cached_clips(items, 16000, 1600, cache, "demo")
    old_entry = entries(cache)
    path = items[2][0]
    write_wav(path, np.full(1200, 0.5, np.float32), 16000)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime whatever the clock
    after = cached_clips(items, 16000, 1600, cache, "demo")
    assert entries(cache) != old_entry and len(entries(cache)) == 1  # stale entry removed
    assert not torch.equal(after.waveforms[2], before.waveforms[2])
    assert torch.equal(after.waveforms, decode_clips(items, 16000, 1600).waveforms)


def test_corrupt_file_is_reported_and_left_out(folder, tmp_path, caplog):
    root, items = folder
    bad = root / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav file")
    clips = cached_clips([*items, (bad, 1)], 16000, 1600, tmp_path / "cache", "demo")
    assert len(clips) == len(items)
    assert len(clips.skipped) == 1 and str(bad) in clips.skipped[0]
    caplog.clear()
    again = cached_clips([*items, (bad, 1)], 16000, 1600, tmp_path / "cache", "demo")
    assert again.skipped == clips.skipped
    assert str(bad) in caplog.text  # reported again when the cache is reused


def test_interrupted_caching_leaves_no_entry(folder, tmp_path, monkeypatch):
    _, items = folder
    cache = tmp_path / "cache"
    calls = {"n": 0}
    real = clips_module.read_audio

    def interrupted(path, sample_rate=None):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(path, sample_rate)

    monkeypatch.setattr(clips_module, "read_audio", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cached_clips(items, 16000, 1600, cache, "demo")
    assert entries(cache) == []  # nothing half-written survives
    # A process killed outright leaves its temporary folder; the next build removes it.
    (cache / ".tmp-demo-999999999-abc").mkdir()
    monkeypatch.setattr(clips_module, "read_audio", real)
    clips = cached_clips(items, 16000, 1600, cache, "demo")
    assert torch.equal(clips.waveforms, decode_clips(items, 16000, 1600).waveforms)
    assert len(entries(cache)) == 1 and not entries(cache)[0].startswith(".tmp")


def test_variable_length_clips(folder, tmp_path):
    _, items = folder
    clips = cached_clips(items, 16000, None, tmp_path / "cache", "var")
    expected = decode_clips(items, 16000, None)
    assert torch.equal(clips.waveforms, expected.waveforms)
    assert torch.equal(clips.lengths, expected.lengths)


def test_read_only_root_falls_back_to_home_cache(tmp_path, monkeypatch):
    root = tmp_path / "ro"
    root.mkdir()
    assert default_cache_dir(root) == root.resolve() / ".speechcnn_cache"
    # As if the data root were read-only (chmod does not stop root, which CI may run as).
    monkeypatch.setattr(store.os, "access", lambda path, mode: False)
    fallback = default_cache_dir(root)
    assert fallback.parent == store.cache_home() and fallback.name.startswith("ro-")
    monkeypatch.setenv("SPEECHCNN_CACHE_DIR", str(tmp_path / "home"))
    assert default_cache_dir(root).parent == tmp_path / "home"


def test_data_module_uses_the_store(tmp_path):
    from speechcnn.data.speech_commands import SpeechCommandsDataModule

    root = make_speech_commands(tmp_path / "sc", clips_per_word=4)
    cache = tmp_path / "cache"
    first = SpeechCommandsDataModule(root=str(root), cache_dir=str(cache))
    first.setup("fit")
    plain = SpeechCommandsDataModule(root=str(root), cache=False)
    plain.setup("fit")
    assert torch.equal(first.clips["train"].waveforms, plain.clips["train"].waveforms)
    entries = {p.name.rsplit("-", 1)[0] for p in cache.iterdir()}
    assert {"speech_commands-12-train", "speech_commands-12-val"} <= entries
