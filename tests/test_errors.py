"""A user error is the last line, names the value and what was expected, exits 2, no traceback."""

from pathlib import Path

import pytest

from speechcnn.cli import main
from speechcnn.recipe import recipe_main

REPO = Path(__file__).resolve().parents[1]
SPEECH_COMMANDS = REPO / "recipes" / "speech_commands.yaml"
FSDD = REPO / "recipes" / "free_spoken_digits.yaml"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHCNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SPEECHCNN_VERBOSE", raising=False)


def last_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Union" not in err and "NoneType" not in err
    return err.strip().splitlines()[-1]


def exits_2(function, *args) -> None:
    with pytest.raises(SystemExit) as info:
        function(*args)
    assert info.value.code == 2


@pytest.mark.parametrize(
    "override, expected",
    [
        (["--data.batch_size", "0"], "speechcnn: error: batch_size must be positive, got 0"),
        (["--model.net.n_mels", "400"], "speechcnn: error: n_mels=400 is too many for a 640-point"),
    ],
)
def test_a_bad_setting_is_one_line(speech_commands_root, tmp_path, capsys, override, expected):
    args = ["fit", "--config", str(SPEECH_COMMANDS), "--data.root", str(speech_commands_root)]
    exits_2(main, [*args, "--trainer.default_root_dir", str(tmp_path), *override])
    assert last_error_line(capsys).startswith(expected)


def test_fsdd_recipe_missing_root_and_unknown_speaker(tmp_path, capsys):
    from test_fsdd_recipe import make_fsdd

    missing = tmp_path / "recordingz"
    exits_2(recipe_main, FSDD, ["--data.root", str(missing)])
    line = last_error_line(capsys)
    assert line.startswith("free_spoken_digits: error: FSDD folder") and str(missing) in line
    root = make_fsdd(tmp_path / "recordings", takes=6)
    speakers = ["--data.split", "speakers", "--data.test_speakers", "[carol]"]
    exits_2(recipe_main, FSDD, ["--data.root", str(root), *speakers])
    line = last_error_line(capsys)
    assert "test_speakers ['carol'] have no recordings" in line and "'alice', 'bob'" in line


def test_verbose_shows_the_traceback(speech_commands_root, tmp_path, monkeypatch):
    args = ["fit", "--config", str(SPEECH_COMMANDS), "--data.root", str(speech_commands_root)]
    args += ["--trainer.default_root_dir", str(tmp_path), "--data.batch_size", "0"]
    with pytest.raises(ValueError, match="batch_size must be positive"):
        main([*args, "--verbose"])
    monkeypatch.setenv("SPEECHCNN_VERBOSE", "1")
    with pytest.raises(ValueError, match="batch_size must be positive"):
        main(args)
