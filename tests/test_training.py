import dataclasses

import pytest
import pytorch_lightning as pl
import torch

from speechcnn.checkpoints import load_module
from speechcnn.data.speech_commands import SpeechCommandsDataModule
from speechcnn.model import ClassifierConfig
from speechcnn.training import SpeechClassifierModule

TINY = ClassifierConfig(
    n_mels=32, cnn_channels=(8, 16), cnn_kernels=(5, 5), cnn_pools=(2, 2), lstm_hidden=32,
    lstm_layers=1, pooling="mean",
)  # fmt: skip


def test_short_training_run_learns(speech_commands_root, tmp_path):
    """A few epochs on the synthetic 12-class task go from chance (1/12) to most clips right."""
    pl.seed_everything(0)
    data = SpeechCommandsDataModule(root=str(speech_commands_root), batch_size=16)
    module = SpeechClassifierModule(data.class_names, data.sample_rate, net=TINY, lr=1e-2)
    trainer = pl.Trainer(
        max_epochs=15, default_root_dir=tmp_path, enable_progress_bar=False, logger=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert trainer.callback_metrics["train/loss"] < 1.5
    result = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert result["val/acc"] >= 0.7


def test_checkpoint_loads_without_config(speech_commands_root, tmp_path):
    module = SpeechClassifierModule(["a", "b", "c"], 8000, net=TINY)
    trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    # Plain hyperparameters: the checkpoint loads with torch's safe (weights-only) unpickler.
    loaded = load_module(path)
    assert loaded.class_names == ["a", "b", "c"] and loaded.hparams.sample_rate == 8000
    assert loaded.hparams.net == dataclasses.asdict(TINY)
    wave = torch.randn(2, 8000)
    module.eval(), loaded.eval()
    torch.testing.assert_close(module(wave), loaded(wave))


def test_predict_step_returns_probabilities():
    module = SpeechClassifierModule(["a", "b", "c"], 8000, net=TINY).eval()
    batch = (torch.randn(2, 8000), torch.tensor([8000, 4000]), torch.tensor([0, 1]))
    probs = module.predict_step(batch, 0)
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))


def _fit_briefly(module, data, tmp_path, steps=6):
    trainer = pl.Trainer(
        max_steps=steps, default_root_dir=tmp_path, enable_progress_bar=False, logger=False,
        enable_model_summary=False, limit_val_batches=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return trainer


def test_ema_averages_weights_and_is_what_gets_evaluated(speech_commands_root, tmp_path):
    from speechcnn.classify import load_classifier

    pl.seed_everything(0)
    data = SpeechCommandsDataModule(root=str(speech_commands_root), batch_size=16)
    module = SpeechClassifierModule(data.class_names, data.sample_rate, net=TINY, ema_decay=0.9)
    start = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = _fit_briefly(module, data, tmp_path)
    live, averaged = module.model.state_dict(), module.averaged.state_dict()
    weight = "head.classifier.weight"
    assert not torch.equal(live[weight], averaged[weight])  # lags behind the live weights
    assert not torch.equal(start[weight], averaged[weight])  # but has moved
    assert not any(p.requires_grad for p in module.averaged.parameters())
    assert module.inference_model is module.averaged

    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_classifier(path).model
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, averaged[name])


def test_mixup_trains(speech_commands_root, tmp_path):
    pl.seed_everything(0)
    data = SpeechCommandsDataModule(root=str(speech_commands_root), batch_size=16)
    module = SpeechClassifierModule(
        data.class_names, data.sample_rate, net=TINY, augment={"mixup_alpha": 0.4}
    )
    trainer = _fit_briefly(module, data, tmp_path)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert module.inference_model is module.model


@pytest.mark.parametrize(
    "kwargs, message",
    [({"ema_decay": 1.0}, "ema_decay"), ({"augment": {"mixup_alpha": -0.1}}, "mixup_alpha"),
     ({"schedule": "linear"}, "schedule"), ({"warmup_fraction": 1.0}, "warmup_fraction")],
)  # fmt: skip
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpeechClassifierModule(["a", "b"], 16000, net=TINY, **kwargs)


def test_checkpoint_settings_of_another_architecture_are_refused():
    from speechcnn.training import config_from_dict

    net = dataclasses.asdict(TINY)
    assert config_from_dict({**net, "members": 1}) == TINY  # `members: 1` is a single model
    with pytest.raises(ValueError, match=r"\['members'\] are not ClassifierConfig fields"):
        config_from_dict({**net, "members": 4})
