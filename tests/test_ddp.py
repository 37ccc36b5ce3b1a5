"""Two-process DDP fit on the CPU (gloo): it trains, ranks see disjoint shards, metrics agree."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import pytorch_lightning as pl
    import torch
    from speechcnn.data.speech_commands import SpeechCommandsDataModule
    from speechcnn.model import ClassifierConfig
    from speechcnn.training import SpeechClassifierModule

    root, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    pl.seed_everything(0)


    class Record(pl.Callback):
        def __init__(self):
            self.losses = []

        def on_train_epoch_end(self, trainer, module):
            self.losses.append(float(trainer.callback_metrics["train/loss_epoch"]))


    data = SpeechCommandsDataModule(root=root, batch_size=8, cache_dir=out + "/cache")
    net = ClassifierConfig(cnn_channels=(8, 16), cnn_kernels=(5, 5), cnn_pools=(2, 2))
    module = SpeechClassifierModule(data.class_names, net=net, lr=1e-2, schedule="constant")
    record = Record()
    trainer = pl.Trainer(
        max_epochs=10, accelerator="cpu", devices=2, strategy="ddp", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[record], default_root_dir=out,
    )
    trainer.fit(module, datamodule=data)
    sampler = trainer.train_dataloader.sampler
    sampler.set_epoch(0)
    state = b"".join(t.detach().numpy().tobytes() for t in module.state_dict().values())
    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "loader": type(trainer.train_dataloader).__name__,
        "shard": torch.cat(list(sampler)).tolist(),
        "steps": trainer.global_step,
        "losses": record.losses,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()
                    if k.startswith("val/") or k == "train/acc"},
        "weights": hashlib.sha256(state).hexdigest(),
    }
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
        json.dump(result, f)
    """
)


def test_two_process_ddp_fit(speech_commands_root, tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    done = subprocess.run(
        [sys.executable, str(script), str(speech_commands_root), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["loader"] == "ResidentBatches" for r in ranks)
    # Each rank trains on its own shard; both run the same number of steps.
    assert not set(ranks[0]["shard"]) & set(ranks[1]["shard"])
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0
    # It trains: the loss goes down.
    for r in ranks:
        assert r["losses"][-1] < r["losses"][0], r["losses"]
    # Gradients were averaged: identical weights, and the synchronised metrics agree.
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["metrics"].keys() == ranks[1]["metrics"].keys() >= {"val/acc", "val/loss"}
    for key, value in ranks[0]["metrics"].items():
        assert abs(value - ranks[1]["metrics"][key]) < 1e-6, key
