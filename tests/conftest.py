import sys
from pathlib import Path

import pytest
import torch

# tests import the fakes as a plain module
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def speech_commands_root(tmp_path_factory):
    from fakes import make_speech_commands

    return make_speech_commands(tmp_path_factory.mktemp("sc") / "speech_commands_v0.02")


@pytest.fixture(scope="session")
def official_test_root(tmp_path_factory):
    from fakes import make_official_test_set

    return make_official_test_set(
        tmp_path_factory.mktemp("sc_test") / "speech_commands_test_set_v0.02"
    )
