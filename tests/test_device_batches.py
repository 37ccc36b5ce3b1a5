"""Device-resident batches: sharding, index selection, the automatic choice, and a fit."""

import logging

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from speechcnn import frontend
from speechcnn.data.clips import ClipSet, ResidentBatches, ShardedBatchSampler, make_loader
from speechcnn.data.speech_commands import SpeechCommandsDataModule
from speechcnn.model import ClassifierConfig
from speechcnn.training import SpeechClassifierModule

TINY = ClassifierConfig(cnn_channels=(4, 8), cnn_kernels=(5, 5), cnn_pools=(2, 2), lstm_hidden=16)


def clip_set(n=23, s=50):
    return ClipSet(
        waveforms=torch.arange(n * s, dtype=torch.int16).reshape(n, s),
        lengths=torch.full((n,), s),
        labels=torch.arange(n) % 5,
        paths=[f"c{i}" for i in range(n)],
    )


def test_training_shards_are_disjoint_equal_and_reshuffled():
    n, world = 103, 3
    samplers = [ShardedBatchSampler(n, 8, True, True, rank, world, seed=1) for rank in range(3)]
    shards = [torch.cat(list(s)) for s in samplers]
    assert len({len(s) for s in samplers}) == 1  # every rank runs the same number of steps
    assert all(len(list(s)) == len(s) == 4 for s in samplers)
    seen = torch.cat(shards)
    assert len(seen) == len(set(seen.tolist()))  # disjoint
    first = shards[0].clone()
    samplers[0].set_epoch(1)
    assert not torch.equal(torch.cat(list(samplers[0])), first)


def test_evaluation_shards_cover_the_split_once():
    n, world = 23, 3
    samplers = [ShardedBatchSampler(n, 4, False, False, rank, world) for rank in range(world)]
    seen = torch.cat([torch.cat(list(s)) for s in samplers])
    assert sorted(seen.tolist()) == list(range(n))
    assert [len(list(s)) for s in samplers] == [len(s) for s in samplers]


def test_length_buckets_cover_every_clip_once_and_group_similar_lengths():
    lengths = torch.randint(100, 10000, (103,))
    sampler = ShardedBatchSampler(103, 8, True, False, lengths=lengths, window=4)
    first = [b.tolist() for b in sampler]
    assert len(first) == len(sampler) == 13
    assert sorted(i for batch in first for i in batch) == list(range(103))
    sampler.set_epoch(1)
    assert first != [b.tolist() for b in sampler]  # a new order every epoch
    spread = sum(float(lengths[b].max() - lengths[b].min()) for b in first) / len(first)
    assert spread < 0.5 * float(lengths.max() - lengths.min())
    dropped = ShardedBatchSampler(103, 8, True, True, lengths=lengths, window=4)
    assert len(list(dropped)) == len(dropped) == 12 and all(len(b) == 8 for b in dropped)
    shards = [ShardedBatchSampler(103, 8, True, True, r, 2, lengths=lengths) for r in (0, 1)]
    seen = [i for s in shards for b in s for i in b.tolist()]
    assert len(seen) == len(set(seen)) == 96 and len(shards[0]) == len(shards[1]) == 6


def test_trimmed_resident_batches_end_at_their_longest_clip():
    clips = clip_set()
    clips.lengths = torch.arange(1, 24) * 2  # 2 .. 46 of 50 samples
    for shuffle in (True, False):
        loader = make_loader(clips, 4, shuffle, "cpu", trim=True)
        assert isinstance(loader, ResidentBatches)
        for waveforms, lengths, _ in loader:
            assert waveforms.shape == (len(lengths), int(lengths.max()))


def test_resident_batches_are_index_selections():
    clips = clip_set()
    loader = ResidentBatches(clips, ShardedBatchSampler(len(clips), 5, False, False), "cpu")
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    waveforms = torch.cat([b[0] for b in batches])
    assert torch.equal(waveforms, clips.waveforms) and waveforms.dtype == torch.int16
    assert torch.equal(torch.cat([b[2] for b in batches]), clips.labels)


def test_choice_is_automatic_logged_and_overridable(caplog):
    clips = clip_set()
    with caplog.at_level(logging.INFO):
        auto = make_loader(clips, 4, True, "cpu", name="train")
    assert isinstance(auto, ResidentBatches) and "resident on cpu" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        forced = make_loader(clips, 4, True, "cpu", resident=False, num_workers=0, name="train")
    assert isinstance(forced, DataLoader) and "per-item DataLoader" in caplog.text


def fit(root, tmp_path, resident):
    pl.seed_everything(0)
    data = SpeechCommandsDataModule(
        root=str(root), batch_size=16, resident=resident, cache_dir=str(tmp_path / "cache")
    )
    module = SpeechClassifierModule(data.class_names, net=TINY, lr=1e-2, schedule="cosine")
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=data)
    return trainer, module, data


def test_fit_with_resident_batches(speech_commands_root, tmp_path):
    trainer, module, data = fit(speech_commands_root, tmp_path, resident=None)
    assert isinstance(trainer.train_dataloader, ResidentBatches)
    assert trainer.train_dataloader.sampler.epoch == 1  # Lightning reshuffles every epoch
    n_train = len(data.clips["train"])
    assert trainer.num_training_batches == n_train // 16
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0
    predictions = trainer.predict(module, datamodule=data)
    assert sum(len(p) for p in predictions) == len(data.clips["test"])


def test_fit_with_dataloader_fallback(speech_commands_root, tmp_path):
    trainer, _, _ = fit(speech_commands_root, tmp_path, resident=False)
    assert isinstance(trainer.train_dataloader, DataLoader)
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])


def test_conv_layouts_compute_the_same_function(monkeypatch):
    cnn = frontend.FrequencyCNN(40, (8, 16), (5, 3), pools=(2, 1), dropout=0.0)
    keys = list(cnn.state_dict())
    start = {k: v.clone() for k, v in cnn.state_dict().items()}
    x = torch.randn(3, 40, 7)
    results = {}
    for layout in frontend.CONV_LAYOUTS:
        monkeypatch.setitem(frontend.CONV_LAYOUT, "cpu", layout)
        cnn.load_state_dict(start)
        xi = x.clone().requires_grad_()
        y = cnn(xi)  # training mode: batch statistics, running statistics updated
        y.square().sum().backward()
        results[layout] = (y.detach(), xi.grad, cnn.layers[1][1].running_var.clone())
        assert list(cnn.state_dict()) == keys
    for layout, (y, grad, running_var) in results.items():
        y0, grad0, running_var0 = results["nchw"]
        assert y.shape == y0.shape == (3, 7, cnn.out_features), layout
        torch.testing.assert_close(y, y0, msg=layout)
        torch.testing.assert_close(grad, grad0, msg=layout)
        torch.testing.assert_close(running_var, running_var0, msg=layout)
