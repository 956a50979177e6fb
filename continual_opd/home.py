"""One folder holds all state of continual-opd, so a run is reproducible, movable and easy to wipe.

`$CONTINUAL_OPD_HOME` (default `./.continual-opd`) contains the MLflow SQLite store and artifact root,
`PREFECT_HOME`, model folders and the data `inbox/`, `processed/`, `quarantine/` folders.

`apply_env_defaults()` runs when the package is imported, before Prefect, MLflow or Hugging Face read
their settings: telemetry off, the hub offline, the libraries' progress bars and info logs off, stores
inside the home. Every value is a default, so
an explicit environment variable (a real Prefect server, a PostgreSQL MLflow) wins.
"""

import contextlib
import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path

OFFLINE_AND_QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "GIT_PYTHON_REFRESH": "quiet",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Quiet libraries: transformers' `Loading weights` / `Writing model shards` bars, their advisory warnings,
    # MLflow's info lines. The stages show their own progress (continual_opd.progress); `--verbose` restores these.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
    # The ephemeral API must have time to migrate a fresh SQLite database on a slow 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


@dataclass(frozen=True)
class Home:
    """Paths inside one continual-opd home; creating the object touches nothing on disk."""

    root: Path

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_db}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def prefect(self) -> Path:
        return self.root / "prefect"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def data_docs(self) -> Path:
        return self.root / "data_docs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def ensure(self) -> "Home":
        """Create the folders; a home that cannot be written fails here with a message that says so."""
        try:
            for path in (self.root, self.artifacts, self.prefect, self.models, self.inbox, self.processed,
                         self.quarantine, self.checkpoints, self.locks):
                path.mkdir(parents=True, exist_ok=True)
            # unique per process and thread: threads ensuring the same home at once must not unlink each other's probe
            probe = self.root / f".write-probe-{os.getpid()}-{threading.get_ident()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise HomeError(
                f"continual-opd home {self.root} is not writable ({exc.strerror or exc}). "
                "Set CONTINUAL_OPD_HOME to a folder you can write, or fix its permissions."
            ) from exc
        return self


class HomeError(RuntimeError):
    """The home folder cannot be used."""


def current_home() -> Home:
    return Home(Path(os.environ.get("CONTINUAL_OPD_HOME", ".continual-opd")).expanduser().resolve())


def apply_env_defaults(home: Home | None = None) -> Home:
    """Set the offline/telemetry defaults and point Prefect's and MLflow's stores into the home."""
    home = home or current_home()
    for key, value in OFFLINE_AND_QUIET.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(home.prefect))
    try:  # Prefect creates PREFECT_HOME at import without parents, and warns when it cannot
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # an unwritable home is reported clearly by Home.ensure() when it is used
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{home.mlflow_db}")
    return home


@contextlib.contextmanager
def file_lock(path: Path, on_wait=None):
    """An exclusive inter-process lock (flock) on `path`; released when the process dies, even by SIGKILL.

    `on_wait()` is called once when another process holds the lock, before blocking on it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_stores(home: Home | None = None) -> Home:
    """Create the home and migrate the MLflow and Prefect databases once, under a lock.

    Several processes migrating a fresh SQLite database at once crash or corrupt it (docs/library-notes.md), so
    the first process migrates while the others wait on the lock, then see the stamp and go on.
    """
    home = (home or current_home()).ensure()
    with file_lock(home.locks / "migrate.lock"):
        stamp = home.root / ".stores-ready"
        uri = os.environ.get("MLFLOW_TRACKING_URI", home.tracking_uri)
        if stamp.exists() and stamp.read_text() == uri:
            return home
        if uri.startswith("sqlite:"):
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            SqlAlchemyStore(uri, str(home.artifacts))  # creates and upgrades the schema
        if not os.environ.get("PREFECT_API_URL"):
            _migrate_prefect_database()
        stamp.write_text(uri)
    return home


def _migrate_prefect_database() -> None:
    import asyncio

    from prefect.server.database import provide_database_interface

    async def upgrade():
        db = provide_database_interface()
        await db.create_db()

    asyncio.run(upgrade())
