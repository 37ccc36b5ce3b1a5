"""One data path for every data set: FSDD and a labelled folder train from the waveform store
with device-resident batches and the batched augmentation, as Speech Commands does."""

import logging

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from fakes import make_class_folders, make_fsdd, write_wav

from speechcnn.data.clips import ResidentBatches
from speechcnn.data.folder import FolderDataError, LabelledAudioDataModule
from speechcnn.data.fsdd import FSDDDataModule
from speechcnn.model import ClassifierConfig
from speechcnn.training import SpeechClassifierModule

TINY = ClassifierConfig(
    cnn_channels=(4,), cnn_kernels=(5,), cnn_pools=(2,), lstm_hidden=8, lstm_layers=1
)


def make_data(kind, tmp_path, **kwargs):
    store = str(tmp_path / "store")
    if kind == "fsdd":
        root = tmp_path / "recordings"
        if not root.is_dir():
            make_fsdd(root, takes=7)
        return FSDDDataModule(str(root), val_takes=1, batch_size=8, cache_dir=store, **kwargs)
    root, noise = tmp_path / "audio", tmp_path / "noise"
    if not root.is_dir():
        make_class_folders(root)
        hum = 0.1 * np.sin(np.arange(3 * 16000) / 16000 * 2 * np.pi * 100).astype(np.float32)
        write_wav(noise / "hum.wav", hum, 16000)
    return LabelledAudioDataModule(
        str(root), noise_dir=str(noise), val_percent=20, test_percent=20, batch_size=4,
        cache_dir=store, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["fsdd", "folder"])
def test_trains_from_the_store_with_resident_batches(kind, tmp_path, caplog):
    augment = {"time_shift_ms": 20.0, "gain_db": 6.0, "speed": 0.1, "noise_snr_db": (0, 20)}
    pl.seed_everything(0)
    data = make_data(kind, tmp_path)
    module = SpeechClassifierModule(
        data.class_names, data.sample_rate, net=TINY, schedule="cosine", augment=augment
    )
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=data)
    loader = trainer.train_dataloader
    assert isinstance(loader, ResidentBatches) and loader.trim
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    for waveforms, lengths, _ in loader:
        assert waveforms.dtype == torch.int16 and waveforms.shape[1] == int(lengths.max())
    assert module.augment.shift_samples == round(data.sample_rate * 0.02)
    assert (module.augment.noise.numel() > 0) == (kind == "folder")  # the folder has noise_dir
    entries = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "store").glob("*-*"))
    assert entries == [f"{data.name}-train", f"{data.name}-val"]

    again = make_data(kind, tmp_path)
    with caplog.at_level(logging.INFO):
        again.setup("fit")
    assert caplog.text.count("memory-mapped from cache") == 2
    assert torch.equal(again.clips["train"].waveforms, data.clips["train"].waveforms)


def test_noise_dir_without_recordings_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHCNN_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    root = make_class_folders(tmp_path / "audio")
    data = LabelledAudioDataModule(
        str(root), noise_dir=str(tmp_path / "empty"), val_percent=30, test_percent=30, cache=False
    )
    with pytest.raises(FolderDataError, match="empty"):
        data.setup("fit")
