"""The LightningModule: one shared step around the classifier, metrics per stage."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from speechcnn.augment import Augmentation, AugmentConfig
from speechcnn.data.clips import Batch
from speechcnn.frontend import count_parameters
from speechcnn.model import ClassifierConfig, SpeechClassifier, build_classifier

SCHEDULES = ("onecycle", "cosine", "constant")

# Augmentation settings that a checkpoint's `net` may hold: they change no trained weight's use.
TRAINING_ONLY = ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width", "freq_warp",
                 "spectral_eq_db")  # fmt: skip


def config_from_dict(net: dict) -> ClassifierConfig:
    """The ClassifierConfig of a checkpoint's `net` hyperparameters; ValueError if they name a
    field it does not have (a checkpoint of another architecture)."""
    net = dict(net)
    if net.get("members", 1) == 1:
        net.pop("members", None)  # `members: 1` records a single model
    for name in TRAINING_ONLY:
        net.pop(name, None)
    fields = {f.name for f in dataclasses.fields(ClassifierConfig)}
    if unknown := sorted(set(net) - fields):
        raise ValueError(
            f"model settings {unknown} are not ClassifierConfig fields ({sorted(fields)}): "
            "not a checkpoint of this version's SpeechClassifier"
        )
    return ClassifierConfig(**net)


class SpeechClassifierModule(pl.LightningModule):
    """Trains a `SpeechClassifier` with cross-entropy and AdamW.

    Args:
        class_names: class names in label order (linked from the data module: one source).
        sample_rate: sample rate of the waveforms (linked from the data module).
        net: architecture hyperparameters (a ClassifierConfig, or its fields as a dict).
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing.
        schedule: "onecycle" (OneCycleLR), "cosine" (linear warm-up, cosine decay) or "constant".
        warmup_fraction: fraction of the training steps spent warming up.
        compile: `torch.compile` the CNN front end, where the training step spends its time.
        ema_decay: evaluate and deploy a moving average of the weights with this decay (0: off).
        augment: what training changes in each clip (an AugmentConfig, or its fields as a dict).
    """

    def __init__(
        self,
        class_names: list[str],
        sample_rate: int = 16000,
        net: ClassifierConfig = ClassifierConfig(),  # noqa: B008 (frozen dataclass)
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        label_smoothing: float = 0.0,
        schedule: str = "onecycle",
        warmup_fraction: float = 0.1,
        compile: bool = False,
        ema_decay: float = 0.0,
        augment: AugmentConfig = AugmentConfig(),  # noqa: B008 (frozen dataclass)
    ) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if isinstance(net, dict):  # as load_from_checkpoint passes it back
            net = config_from_dict(net)
        if isinstance(augment, dict):
            augment = AugmentConfig(**augment)
        self.save_hyperparameters(ignore=["net", "augment"])
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        self.hparams["net"] = dataclasses.asdict(net)
        self.hparams["augment"] = dataclasses.asdict(augment)
        self.augment = Augmentation(augment, sample_rate)
        self.class_names = list(class_names)
        self.model: SpeechClassifier = build_classifier(net, len(class_names), sample_rate)
        # The average is a frozen copy that only on_train_batch_end writes to.
        self.averaged: SpeechClassifier | None = (
            copy.deepcopy(self.model).requires_grad_(False) if ema_decay > 0 else None
        )
        if compile:
            # Module.compile compiles in place: parameter names (and checkpoints) stay as they are.
            self.model.frontend.compile()
        k = len(class_names)
        # validate_args=False: the argument checks synchronise with the GPU on every step; the
        # data modules' labels are in range by construction.
        metric = functools.partial(MulticlassAccuracy, k, average="micro", validate_args=False)
        self.acc = torch.nn.ModuleDict({f"{s}_acc": metric() for s in ("train", "val", "test")})
        self.test_confusion = MulticlassConfusionMatrix(k)

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.model)

    @property
    def inference_model(self) -> SpeechClassifier:
        """The weights to evaluate and deploy: the moving average when there is one."""
        return self.averaged if self.averaged is not None else self.model

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, S) waveforms, (B,) lengths -> (B, K) logits, from the trained weights."""
        return self.model(waveforms, lengths)

    def _shared_step(self, batch: Batch, stage: str) -> Tensor:
        waveforms, lengths, labels = batch
        if stage != "train":
            logits = self.inference_model(waveforms, lengths)
            loss = F.cross_entropy(logits, labels)
        else:
            waveforms = self.augment.waveforms(waveforms, lengths)
            waveforms, lengths, targets = self.augment.mixup(waveforms, lengths, labels)
            features = self.augment.features(self.model.features, waveforms)
            logits = self.model.classify_features(features, self.model.frame_lengths(lengths))
            smooth = self.hparams.label_smoothing
            loss = sum(w * F.cross_entropy(logits, t, label_smoothing=smooth) for t, w in targets)
        preds = logits.argmax(dim=-1)
        accuracy = self.acc[f"{stage}_acc"]
        accuracy(preds, labels)
        on_step = stage == "train"
        logged = dict(on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log(f"{stage}/loss", loss, on_step=on_step, sync_dist=not on_step, **logged)
        self.log(f"{stage}/acc", accuracy, on_step=False, **logged)
        if stage == "test":
            self.test_confusion.update(preds, labels)
        return loss

    def setup(self, stage: str) -> None:
        """Before training: the data module's background noise, for `augment` to mix in."""
        noise = getattr(self.trainer.datamodule, "training_noise", None) if self._trainer else None
        if stage == "fit" and noise is not None:
            self.augment.set_noise(noise)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """(B, K) class probabilities."""
        waveforms, lengths, _ = batch
        return self.inference_model(waveforms, lengths).softmax(dim=-1)

    @torch.no_grad()
    def on_train_batch_end(self, outputs: object, batch: Batch, batch_idx: int) -> None:
        if self.averaged is None:
            return
        # Early on the average would be mostly the random init: ramp the decay up.
        step = self.global_step
        decay = min(self.hparams.ema_decay, (1.0 + step) / (10.0 + step))
        averaged = [t for t in self.averaged.state_dict().values() if t.is_floating_point()]
        live = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        # Buffers too (batch-norm statistics), so they follow the averaged weights.
        torch._foreach_lerp_(averaged, live, 1.0 - decay)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        decay, no_decay = [], []
        for param in self.model.parameters():
            # Norm scales and biases are not weights to shrink.
            (no_decay if param.ndim <= 1 else decay).append(param)
        groups = [(decay, hp.weight_decay), (no_decay, 0.0)]
        optimizer = torch.optim.AdamW([dict(params=p, weight_decay=w) for p, w in groups], lr=hp.lr)
        if hp.schedule == "constant":
            return {"optimizer": optimizer}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(total * hp.warmup_fraction))

        def warmup_cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        # OneCycleLR needs at least two steps in each of its phases; very short runs (tests,
        # smoke runs) take the equivalent warm-up/cosine schedule instead.
        if hp.schedule == "onecycle" and 2 <= warmup <= total - 2:
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, hp.lr, total_steps=total, pct_start=warmup / total, anneal_strategy="cos"
            )
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}
