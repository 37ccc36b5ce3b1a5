"""A stopped run exits non-zero and resumes to the uninterrupted result; a run folder that
cannot be resumed says why and what to do."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from speechcnn.checkpoints import load_checkpoint
from speechcnn.resume import UnresumableRunError, check_resumable
from speechcnn.training import SpeechClassifierModule

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--model.net.n_mels=16", "--model.net.cnn_channels=[4, 8]", "--model.net.cnn_kernels=[3, 3]",
    "--model.net.cnn_pools=[2, 2]", "--model.net.lstm_hidden=16", "--model.net.lstm_layers=1",
    "--data.batch_size=16", "--trainer.enable_progress_bar=false",
]  # fmt: skip
KILL_IN_EPOCH_1 = [
    "--trainer.callbacks+=fakes.SigtermAt", "--trainer.callbacks.epoch=1",
    "--trainer.callbacks.batch=1",
]  # fmt: skip


def recipe(root: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, str(REPO / "recipes/speech_commands.py"), "--data.root", str(root),
        "--trainer.default_root_dir", str(run_dir), *TINY, *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def uninterrupted(speech_commands_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole")
    done = recipe(speech_commands_root, run_dir, "--trainer.max_epochs=2")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, json.loads(last_line(done.stdout))


def test_sigterm_mid_epoch_exits_non_zero_and_resumes_bit_identical(
    speech_commands_root, uninterrupted, tmp_path
):
    whole_dir, whole = uninterrupted
    run_dir = tmp_path / "stopped"
    stopped = recipe(speech_commands_root, run_dir, "--trainer.max_epochs=2", *KILL_IN_EPOCH_1)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert not list(run_dir.rglob("metrics.json"))
    message = last_line(stopped.stderr)
    assert "stopped by SIGTERM in epoch 1" in message and "run the same command" in message
    assert str(run_dir / "checkpoints" / "last.ckpt") in message
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 0

    resumed = recipe(speech_commands_root, run_dir, "--trainer.max_epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    metrics = json.loads(last_line(resumed.stdout))
    assert metrics["test_accuracy"] == whole["test_accuracy"]
    a = load_checkpoint(whole_dir / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bit for bit, the EMA average included


def copy_run(source: Path, target: Path) -> Path:
    (target / "checkpoints").mkdir(parents=True)
    last = target / "checkpoints" / "last.ckpt"
    last.write_bytes((source / "checkpoints" / "last.ckpt").read_bytes())
    return last


@pytest.mark.parametrize(
    "damage, why",
    [
        (
            "epochs",
            r"trained toward 2 epochs \(2 done\) and this command asks for 3.*"
            r"resume it with --trainer.max_epochs 2",
        ),
        ("n_mels", r"other model settings \(model.net.n_mels: 16 in the folder, 20 now"),
        ("empty", r"empty \(0 bytes\)"),
        ("corrupt", "truncated or corrupt"),
    ],
)
def test_a_changed_model_or_damaged_checkpoint_cannot_be_resumed(
    uninterrupted, tmp_path, damage, why
):
    whole_dir, _ = uninterrupted
    last = copy_run(whole_dir, tmp_path / "run")
    hparams = load_checkpoint(last)["hyper_parameters"]
    net = {**hparams["net"], "n_mels": 20 if damage == "n_mels" else 16}
    module = SpeechClassifierModule(hparams["class_names"], 16000, net=net,
                                    **{k: v for k, v in hparams.items()
                                       if k not in ("class_names", "sample_rate", "net")
                                       and not k.startswith("_")})  # fmt: skip
    if damage == "empty":
        last.write_bytes(b"")
    if damage == "corrupt":
        last.write_bytes(last.read_bytes()[:1000])
    before = last.read_bytes()
    with pytest.raises(UnresumableRunError) as info:
        check_resumable(last, module, max_epochs=3 if damage == "epochs" else 2)
    message = str(info.value)
    assert re.search(why, message), message
    assert message.startswith(f"cannot resume {tmp_path / 'run'}: ")
    assert "\n" not in message and "new --trainer.default_root_dir" in message
    assert last.read_bytes() == before


class CtrlCInEpoch1(pl.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def test_ctrl_c_exits_non_zero_and_says_how_to_resume(tmp_path, capsys):
    from test_recipes import WorseEveryEpoch

    from speechcnn.checkpoints import SafeCheckpointIO
    from speechcnn.resume import ExactResume

    last = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last", monitor=None)
    trainer = pl.Trainer(
        max_epochs=3, callbacks=[ExactResume(), last, CtrlCInEpoch1()], logger=False,
        enable_progress_bar=False, enable_model_summary=False, plugins=[SafeCheckpointIO()],
    )  # fmt: skip
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as info:
            trainer.fit(WorseEveryEpoch())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl-C while it shuts down
    assert info.value.code not in (0, None)
    message = last_line(capsys.readouterr().err)
    assert "stopped by Ctrl-C (SIGINT) in epoch 1" in message
    assert f"{tmp_path / 'checkpoints' / 'last.ckpt'} holds epoch 0" in message
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert saved["epoch"] == 0 and "speechcnn_rng_states" in saved


def test_an_empty_last_checkpoint_is_reported_as_the_run_folder_it_is_in(
    speech_commands_root, tmp_path
):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    done = recipe(speech_commands_root, tmp_path / "run", "--trainer.max_epochs=1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    message = last_line(done.stderr)
    assert message.startswith(f"speech_commands: error: cannot resume {tmp_path / 'run'}: ")
    assert "empty (0 bytes)" in message and "new --trainer.default_root_dir" in message
    assert last.is_file()
