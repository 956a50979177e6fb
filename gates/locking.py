"""The gate's lock: decisions and rollbacks of one registered model happen one at a time.

MLflow alias moves are last-writer-wins and MLflow keeps no history of them, so two gates deciding at
once could both promote. Every decision and rollback runs under an flock on `<home>/locks/gate.lock`
and, when a Prefect server is configured (`PREFECT_API_URL`), under its global concurrency limit
(`continual-opd-gate`, one slot, created when missing), which serialises homes on several machines.
The embedded default has no server: each process's ephemeral API cannot revoke the lease of a holder
that was killed, so its slot would stay taken and block every later gate of the home for good; the
flock, which the kernel releases with the process, is the lock there (tests/test_reliability_crash.py).
"""

import contextlib
import threading

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings

from continual_opd.home import Home, file_lock

_PREFECT_CLIENT_START = threading.Lock()  # Prefect's ephemeral API start is not thread-safe


@contextlib.contextmanager
def gate_lock(home: Home, concurrency_limit: str = "", timeout_s: float = 1800.0):
    """Prefect's global concurrency slot (on a shared server), then the home's flock (across processes)."""
    if concurrency_limit and prefect_server_configured():
        ensure_concurrency_limit(concurrency_limit)
        with concurrency(concurrency_limit, occupy=1, timeout_seconds=timeout_s, strict=True):
            with file_lock(home.locks / "gate.lock"):
                yield
    else:
        with file_lock(home.locks / "gate.lock"):
            yield


def prefect_server_configured() -> bool:
    """True when flows talk to a Prefect server (which revokes a dead holder's lease), not an ephemeral API."""
    return bool(get_current_settings().api.url)


def ensure_concurrency_limit(name: str, limit: int = 1) -> None:
    """Create the Prefect global concurrency limit if it does not exist (like `prefect gcl create NAME --limit 1`)."""
    with _PREFECT_CLIENT_START, get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
        except ObjectAlreadyExists:
            pass
