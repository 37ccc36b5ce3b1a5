import numpy as np
import pytest
import torch
from fakes import word_tone, write_wav

from speechcnn.data.speech_commands import (
    ALL_WORDS,
    KEYWORDS,
    NOISE_DIR,
    SILENCE,
    UNKNOWN,
    DataError,
    SpeechCommandsDataModule,
    index_speech_commands,
)


def test_official_split_rule(speech_commands_root):
    splits = index_speech_commands(speech_commands_root)
    listed_val = set((speech_commands_root / "validation_list.txt").read_text().split())
    assert {rel for rel, _ in splits["val"]} == listed_val
    assert len(splits["train"]) == 14 * 6 and len(splits["val"]) == 14 * 3
    all_paths = [rel for split in splits.values() for rel, _ in split]
    assert len(all_paths) == len(set(all_paths)) == 14 * 12


def test_twelve_class_task(speech_commands_root):
    data = SpeechCommandsDataModule(root=str(speech_commands_root), task="12")
    data.setup("fit")
    assert data.class_names == [SILENCE, UNKNOWN, *KEYWORDS] and data.num_classes == 12
    train = data.clips["train"]
    counts = torch.bincount(train.labels, minlength=12).tolist()
    # 6 training clips per keyword; unknown (24 available) subsampled and silence cut to match.
    assert counts == [6] * 12
    assert train.waveforms.shape == (72, 16000) and train.waveforms.dtype == torch.int16
    unknown_paths = [p for p, y in zip(train.paths, train.labels.tolist(), strict=True) if y == 1]
    assert all(p.split("/")[-2] not in KEYWORDS for p in unknown_paths)
    silence = train.waveforms[train.labels == 0]
    assert silence.abs().amax() > 0  # cut from background noise, not zeros


def test_thirty_five_class_task(speech_commands_root):
    data = SpeechCommandsDataModule(root=str(speech_commands_root), task="35")
    data.setup("fit")
    assert data.num_classes == 35
    train = data.clips["train"]
    words = {ALL_WORDS[y] for y in train.labels.tolist()}
    assert words == {p.split("/")[-2] for p in train.paths}
    assert len(train) == 14 * 6


def test_official_test_layout(speech_commands_root, official_test_root):
    data = SpeechCommandsDataModule(
        root=str(speech_commands_root), test_root=str(official_test_root)
    )
    data.setup("test")
    test = data.clips["test"]
    assert len(test) == 36
    assert torch.bincount(test.labels, minlength=12).tolist() == [3] * 12
    assert any(p.endswith(".wav.wav") for p in test.paths)


def test_batches_are_float_and_augmented_only_in_training(speech_commands_root):
    data = SpeechCommandsDataModule(root=str(speech_commands_root), batch_size=8)
    data.setup("fit")
    waveforms, lengths, labels = next(iter(data.val_dataloader()))
    assert waveforms.dtype == torch.int16 and waveforms.shape == (8, 16000)
    out, _, _ = data.on_after_batch_transfer((waveforms, lengths, labels), 0)
    assert out.dtype == torch.float32 and out.abs().max() <= 1.0
    torch.testing.assert_close(out, waveforms.float() / 32768)


def test_missing_folder_says_how_to_get_data(tmp_path):
    data = SpeechCommandsDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="speech_commands_v0.02.tar.gz"):
        data.setup("fit")


def test_malformed_folder_names_what_is_missing(tmp_path):
    (tmp_path / "yes").mkdir()
    with pytest.raises(DataError, match="validation_list.txt"):
        SpeechCommandsDataModule(root=str(tmp_path)).setup("fit")


def test_official_layout_missing_classes(speech_commands_root, tmp_path):
    (tmp_path / "yes").mkdir()
    data = SpeechCommandsDataModule(root=str(speech_commands_root), test_root=str(tmp_path))
    with pytest.raises(DataError, match="_silence_"):
        data.setup("test")


def test_bad_file_is_skipped_and_named(speech_commands_root, tmp_path, capsys, caplog):
    import shutil

    root = tmp_path / "sc"
    shutil.copytree(speech_commands_root, root)
    bad = next((root / "yes").glob("*.wav"))
    bad.write_bytes(b"RIFF not really a wav")
    data = SpeechCommandsDataModule(root=str(root))
    data.setup("fit")
    loaded = [p for split in data.clips.values() for p in split.paths]
    assert str(bad) not in loaded and len(loaded) > 0
    skipped = [s for split in data.clips.values() for s in split.skipped]
    reported = "\n".join([*skipped, capsys.readouterr().out, caplog.text])
    assert str(bad) in reported


@pytest.mark.parametrize(
    "kwargs", [{"task": "10"}, {"batch_size": 0}, {"task": "35", "test_root": "x"}]
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        SpeechCommandsDataModule(**kwargs)


def test_training_silence_spans_the_loudness_asked_for(speech_commands_root):
    data = SpeechCommandsDataModule(
        root=str(speech_commands_root), silence_rms=(0.01, 0.2), cache=False
    )
    data.setup("fit")

    def silence_rms(split):
        clips = data.clips[split]
        waves = clips.waveforms[clips.labels == 0].float() / 32768  # _silence_ is label 0
        return waves.square().mean(dim=1).sqrt()

    train = silence_rms("train")
    assert train.min() > 0.0095 and train.max() < 0.21 and train.max() / train.min() > 2
    plain = SpeechCommandsDataModule(root=str(speech_commands_root), cache=False)
    plain.setup("fit")
    torch.testing.assert_close(data.clips["val"].waveforms, plain.clips["val"].waveforms)
    with pytest.raises(ValueError, match="silence_rms"):
        SpeechCommandsDataModule(root=str(speech_commands_root), silence_rms=(0.2, 0.1))


def test_unknown_roots_add_other_speech_to_training_unknown_only(speech_commands_root, tmp_path):
    others = tmp_path / "others"
    for i in range(10):
        write_wav(
            others / "a" / f"long_{i}.wav",
            word_tone("other", 8000, 2.5, np.random.default_rng(i)),
            8000,
        )
    write_wav(others / NOISE_DIR / "hum.wav", np.zeros(8000, dtype=np.float32), 8000)
    data = SpeechCommandsDataModule(root=str(speech_commands_root), unknown_roots=[str(others)])
    data.setup("fit")
    train = data.clips["train"]
    extra = [i for i, p in enumerate(train.paths) if p.startswith(str(others))]
    assert len(extra) == 6  # a keyword class's size, drawn from the 10 recordings
    assert (train.labels[extra] == 1).all() and train.waveforms.shape[1] == 16000
    assert not any("hum" in p for p in train.paths)
    assert not any(p.startswith(str(others)) for p in data.clips["val"].paths)
    with pytest.raises(ValueError, match="missing"):
        SpeechCommandsDataModule(
            root=str(speech_commands_root), unknown_roots=[str(tmp_path / "missing")]
        )
    with pytest.raises(ValueError, match="unknown_roots"):
        SpeechCommandsDataModule(
            root=str(speech_commands_root), task="35", unknown_roots=[str(others)]
        )
