"""Shared fixtures: an isolated home per test session and the demo world's pretrained base.

The base is pretrained once per machine (cached by `demo_world.bootstrap`), so only the first test
session on a fresh machine pays the few minutes it takes.
"""

import os
import sys
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="continual-opd-test-home-"))
os.environ["CONTINUAL_OPD_HOME"] = str(_SESSION_HOME)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_HOME", None)
os.environ.pop("PREFECT_API_URL", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import continual_opd  # noqa: E402,F401  (applies the offline defaults before anything else imports)


@pytest.fixture(scope="session")
def home():
    """The session's home, with migrated stores."""
    from continual_opd.home import current_home, prepare_stores

    return prepare_stores(current_home())


@pytest.fixture(scope="session")
def base_folder():
    """Folder of the pretrained demo base (not registered anywhere)."""
    from demo_world.bootstrap import pretrained_base
    from demo_world.pretrain import PretrainConfig

    folder, _ = pretrained_base(PretrainConfig())
    return folder


@pytest.fixture(scope="session")
def champion(home, base_folder):
    """The bootstrapped champion of the session's home (a ModelRef)."""
    from demo_world.bootstrap import bootstrap

    return bootstrap(home)


@pytest.fixture()
def torch_threads():
    import torch

    torch.set_num_threads(2)
    yield
