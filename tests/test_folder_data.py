"""Any labelled audio: class folders and CSV manifests at any rate, channel count and length."""

import numpy as np
import pytest
import torch
from fakes import WORDS, make_class_folders, word_tone, write_wav

from speechcnn.data.clips import collate_trimmed
from speechcnn.data.folder import FolderDataError, LabelledAudioDataModule, hash_split


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHCNN_CACHE_DIR", str(tmp_path / "cache"))
    return make_class_folders(tmp_path / "audio")


def test_class_folders_any_rate_channels_and_length(folder):
    data = LabelledAudioDataModule(str(folder), sample_rate=16000, val_percent=20, test_percent=20)
    assert data.class_names == ["bird", "cat", "dog"]
    assert len(data.items) == 30  # notes.txt ignored, sub-folders included
    data.setup()
    total = sum(len(data.clips[s]) for s in ("train", "val", "test"))
    assert total == 30
    train = data.clips["train"]
    assert train.waveforms.dtype == torch.int16
    # lengths are each clip's own at 16 kHz: 0.3 s .. 1.2 s
    assert set(train.lengths.tolist()) <= {round(16000 * (0.3 + 0.1 * k)) for k in range(10)}
    assert train.waveforms.shape[1] == int(train.lengths.max())


def test_split_is_deterministic_and_stable(folder):
    a = LabelledAudioDataModule(str(folder), val_percent=20, test_percent=20)
    b = LabelledAudioDataModule(str(folder), val_percent=20, test_percent=20)
    for split in ("train", "val", "test"):
        assert a.split_items(split) == b.split_items(split)
    assert {hash_split(f"k{i}", 20, 20) for i in range(50)} == {"train", "val", "test"}
    assert hash_split("same", 10, 10) == hash_split("same", 10, 10)


def test_group_pattern_keeps_a_group_in_one_split(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHCNN_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for word in WORDS:
        for speaker in range(6):
            for take in range(3):
                clip = word_tone(word, 8000, 0.3, rng)
                write_wav(tmp_path / "a" / word / f"spk{speaker}_{take}.wav", clip, 8000)
    data = LabelledAudioDataModule(str(tmp_path / "a"), group_pattern=r"^(spk\d+)_")
    splits = {}
    for item in data.items:
        splits.setdefault(item.path.name.split("_")[0], set()).add(data.split_of(item))
    assert all(len(s) == 1 for s in splits.values())


def test_manifest_with_and_without_split(folder, tmp_path):
    rows = ["path,label,split"]
    for i, path in enumerate(sorted(folder.rglob("*.wav"))):
        rel = path.relative_to(folder).as_posix()
        rows.append(f"{rel},{rel.split('/')[0]},{['train', 'validation', ''][i % 3]}")
    manifest = folder / "list.csv"
    manifest.write_text("\n".join(rows) + "\n")
    data = LabelledAudioDataModule(str(folder), manifest=str(manifest))
    assert len(data.items) == 21  # the WAV files; FLAC ones are not listed
    given = [item for item in data.items if item.split is not None]
    assert {item.split for item in given} == {"train", "val"}
    assert all(data.split_of(item) == item.split for item in given)

    (tmp_path / "bad.csv").write_text("file,class\na.wav,x\n")
    with pytest.raises(FolderDataError, match="path,label"):
        LabelledAudioDataModule(str(folder), manifest=str(tmp_path / "bad.csv"))
    (tmp_path / "bad2.csv").write_text("path,label,split\na.wav,x,holdout\n")
    with pytest.raises(FolderDataError, match="holdout"):
        LabelledAudioDataModule(str(folder), manifest=str(tmp_path / "bad2.csv"))


def test_batches_are_padded_to_their_longest_clip(folder):
    data = LabelledAudioDataModule(str(folder), batch_size=4, val_percent=20, test_percent=20)
    data.setup("fit")
    for waveforms, lengths, labels in data.train_dataloader():
        assert waveforms.shape == (len(labels), int(lengths.max()))
        for row, n in zip(waveforms, lengths, strict=True):
            assert not row[int(n) :].any()
    batch = [(torch.ones(10, dtype=torch.int16), torch.tensor(3), torch.tensor(0))] * 2
    assert collate_trimmed(batch)[0].shape == (2, 3)


def test_max_and_min_seconds(folder):
    data = LabelledAudioDataModule(
        str(folder), max_seconds=0.5, min_seconds=0.4, val_percent=20, test_percent=20
    )
    data.setup("fit")
    clips = data.clips["train"]
    assert clips.waveforms.shape[1] == 8000
    assert int(clips.lengths.max()) == 8000 and int(clips.lengths.min()) == 6400


def test_bad_files_are_skipped_and_named(folder):
    (folder / "dog" / "broken.wav").write_bytes(b"garbage" * 20)
    write_wav(folder / "dog" / "zeros.wav", np.zeros(4000, dtype=np.float32), 16000)
    data = LabelledAudioDataModule(str(folder), val_percent=30, test_percent=30)
    data.setup()
    skipped = [s for split in ("train", "val", "test") for s in data.clips[split].skipped]
    assert sorted(s.split(":")[0].rsplit("/", 1)[1] for s in skipped) == ["broken.wav", "zeros.wav"]
    assert data.check_report.counts()["sample_rate"] == 21  # fixed on load and counted


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"sample_rate": -1}, "sample_rate"),
        ({"max_seconds": 0.0}, "max_seconds"),
        ({"val_percent": 60, "test_percent": 50}, "val_percent"),
    ],
)
def test_bad_arguments_name_the_value(folder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LabelledAudioDataModule(str(folder), **kwargs)


def test_missing_folder_and_no_classes(tmp_path):
    with pytest.raises(FolderDataError, match="does not exist"):
        LabelledAudioDataModule(str(tmp_path / "nope"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(FolderDataError, match="no audio files"):
        LabelledAudioDataModule(str(tmp_path / "empty"))
