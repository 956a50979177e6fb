"""Shared fixtures: an isolated home per test session and the demo world's pretrained base.

The base is pretrained once per machine (cached by `demo_world.bootstrap`), so only the first test
session on a fresh machine pays the few minutes it takes.
"""

import os
import shutil
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
from tests.helpers.threads import TORCH_THREADS, limit_native_threads  # noqa: E402

limit_native_threads()  # before torch is first imported


def pytest_collection_modifyitems(config, items):
    """Files with slow tests run first (each file keeps its own order), so `make test`'s two workers, which take
    whole files in collection order (`--no-loadscope-reorder`), do not end with one of them alone on the longest
    files."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="session")
def home():
    """The session's home, with migrated stores."""
    from continual_opd.home import current_home, prepare_stores

    return prepare_stores(current_home())


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An empty, migrated MLflow SQLite file to copy (migrating a new one costs 5-30 s on this machine)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("empty-store")
    SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts"))
    return folder / "mlflow.db"


@pytest.fixture()
def fresh_world(home, empty_store, tmp_path):
    """A home with a store of its own (empty registry, ledger and matrix), the current one during this test."""
    import mlflow

    from continual_opd.home import Home, prepare_stores
    from tests.helpers.environ import environment

    world = Home(tmp_path / "home").ensure()
    shutil.copy(empty_store, world.mlflow_db)
    try:
        with environment(CONTINUAL_OPD_HOME=str(world.root), MLFLOW_TRACKING_URI=f"sqlite:///{world.mlflow_db}"):
            yield prepare_stores(world)
    finally:
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", home.tracking_uri))


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

    torch.set_num_threads(TORCH_THREADS)
    yield
