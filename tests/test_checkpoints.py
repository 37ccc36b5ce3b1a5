"""No checkpoint can run code: files and http(s) addresses, every entry point."""

import dataclasses
import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
import yaml
from test_classify import CLASSES, TINY, make_checkpoint

from speechcnn.checkpoints import CheckpointFileError, SafeCheckpointIO, load_checkpoint
from speechcnn.classify import ModelFileError, load_classifier
from speechcnn.cli import main
from speechcnn.resume import UnresumableRunError, check_resumable
from speechcnn.training import SpeechClassifierModule

REPO = Path(__file__).resolve().parents[1]


class WritesMarker:
    """Unpickling this calls open(marker, "w"): a file appears if the pickle runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def evil(tmp_path):
    """(checkpoint path, marker path): a real checkpoint with a code-running object inside."""
    good = torch.load(make_checkpoint(tmp_path / "good.ckpt"), weights_only=True)
    marker = tmp_path / "marker"
    good["hyper_parameters"]["payload"] = WritesMarker(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(good, path)
    return path, marker


@pytest.fixture()
def served(evil):
    """The crafted checkpoint at an http://127.0.0.1 address of a server this test runs."""
    path, marker = evil
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/{path.name}", marker
    server.shutdown()
    server.server_close()


def test_loader_refuses_code_in_files_and_urls_and_never_advises_an_unsafe_load(evil, served):
    for source, marker in (evil, served):
        with pytest.raises(CheckpointFileError) as info:
            load_checkpoint(source)
        message = str(info.value)
        assert str(source) in message and "\n" not in message
        assert "weights_only=False" not in message and "open while loading" in message
        assert not marker.exists()
        with pytest.raises(ModelFileError):
            load_classifier(source)
        with pytest.raises(CheckpointFileError):
            SafeCheckpointIO().load_checkpoint(source, weights_only=False)
        assert not marker.exists()


def test_loader_names_empty_truncated_and_missing_files(tmp_path):
    good = make_checkpoint(tmp_path / "good.ckpt")
    empty, cut = tmp_path / "empty.ckpt", tmp_path / "cut.ckpt"
    empty.write_bytes(b"")
    cut.write_bytes(good.read_bytes()[:300])
    cut_late = tmp_path / "cut_late.ckpt"  # past the first records: another reader error
    cut_late.write_bytes(good.read_bytes()[:5000])
    for path, why in [
        (empty, r"empty \(0 bytes\)"),
        (cut, "truncated or corrupt"),
        (cut_late, "truncated or corrupt"),
        (tmp_path / "gone.ckpt", "does not exist"),
    ]:
        with pytest.raises(CheckpointFileError, match=why):
            load_checkpoint(path)
    assert load_checkpoint(good)["hyper_parameters"]["class_names"] == CLASSES


@pytest.fixture()
def tiny_config(speech_commands_root, tmp_path):
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1, "default_root_dir": str(tmp_path / "run"), "logger": False,
            "enable_progress_bar": False, "enable_model_summary": False,
        },
        "model": {"net": {k: list(v) if isinstance(v, tuple) else v
                          for k, v in dataclasses.asdict(TINY).items()}},
        "data": {
            "class_path": "speechcnn.data.SpeechCommandsDataModule",
            "init_args": {"root": str(speech_commands_root), "batch_size": 16},
        },
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_every_lightning_entry_point_refuses_a_served_checkpoint(
    subcommand, served, tiny_config, capsys
):
    url, marker = served
    with pytest.raises(SystemExit) as info:
        main([subcommand, "--config", str(tiny_config), "--ckpt_path", url])
    assert info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("speechcnn: error: ") and url in last_line
    assert not marker.exists()


@pytest.mark.parametrize("command", ["classify", "spot", "export"])
def test_file_commands_refuse_a_crafted_checkpoint(command, evil, tmp_path, capsys):
    path, marker = evil
    args = [command, str(path), str(tmp_path / "a.wav")]
    if command == "export":
        args = [command, str(path), "--out-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert str(path) in capsys.readouterr().err.strip().splitlines()[-1]
    assert not marker.exists()


def test_recipe_resume_refuses_a_crafted_last_checkpoint(evil, tmp_path):
    path, marker = evil
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(path.read_bytes())
    module = SpeechClassifierModule(CLASSES, 16000, net=TINY)
    with pytest.raises(UnresumableRunError, match="new --trainer.default_root_dir"):
        check_resumable(last, module, max_epochs=1)
    assert not marker.exists() and last.is_file()


def test_accuracy_benchmark_reads_checkpoints_safely(evil):
    import importlib.util

    path, marker = evil
    spec = importlib.util.spec_from_file_location("accuracy", REPO / "benchmarks/accuracy.py")
    accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy)
    assert accuracy.val_accuracy(str(path)) is None  # refused, not run
    assert not marker.exists()
