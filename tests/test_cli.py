"""`speechcnn SUBCOMMAND --help`: every option says what it does and its default."""

import re

import pytest

from speechcnn.cli import main


def option_blocks(text: str) -> list[str]:
    """Each option's lines of an argparse / jsonargparse help text."""
    return [b.strip() for b in re.split(r"\n(?=  -)", text)[1:] if b.lstrip().startswith("-")]


@pytest.mark.parametrize(
    "command", ["calibrate", "classify", "spot", "listen", "export", "check-data", "fit", "test"]
)
def test_every_option_has_a_help_text_with_its_default(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    blocks = option_blocks(capsys.readouterr().out)
    # argparse's own -h and jsonargparse's config-file and subclass-help options need none
    meta = [b for b in blocks if b.startswith(("-h", "-c", "--print_config")) or "CONFIG" in b
            or ".help" in b.split()[0]]  # fmt: skip
    missing = [b for b in blocks if b not in meta and not re.search(r"default|required", b)]
    assert len(blocks) > len(meta) and not missing, missing
