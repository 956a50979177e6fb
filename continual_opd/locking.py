"""One holder at a time: across machines when a Prefect server is configured, across the processes of a home always.

With a Prefect server (`PREFECT_API_URL`), `exclusive` takes one slot of a Prefect global concurrency limit (created
with one slot when missing) under a *lease*: a thread of the holder renews it, and when the holder dies the server
revokes it once `lease_s` has passed (its repossessor service looks every 15 s), so a crashed worker never blocks the
others for good. Inside the slot it takes the home's flock too, which keeps the processes of one home apart whatever
happens to the lease. A waiter is told once that it waits, and on what, before it blocks.

The embedded default has no server, so there the flock alone is the lock: each process's ephemeral API keeps its
leases in its own memory, so a killed holder's slot would never be revoked and would block every later holder for
good, while the kernel releases a flock with its process, even after SIGKILL (tests/test_reliability_crash.py).
"""

import contextlib
import threading
from collections.abc import Callable

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings

from continual_opd.home import Home, file_lock

_PREFECT_CLIENT_START = threading.Lock()  # Prefect's ephemeral API start is not thread-safe
HTTP_LOCKED = 423  # what Prefect's API answers while every slot of a limit is taken


class LockTimeout(TimeoutError):
    """The lock stayed taken for longer than the caller was willing to wait."""


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


@contextlib.contextmanager
def exclusive(home: Home, name: str, *, limit: str = "", timeout_s: float | None = None, lease_s: float = 300.0,
              on_wait: Callable[[str], None] | None = None, holder_flow_run: str = "",
              stop_if_lease_lost: bool = True):
    """Hold `<home>/locks/<name>.lock`, and first one slot of the Prefect global concurrency limit `limit`
    when a server is configured (an empty `limit` means the flock alone).

    `on_wait(what)` is called once, before blocking, when another holder has the lock; `what` says which lock.
    `timeout_s` bounds the wait for the Prefect slot (`LockTimeout`); the flock under it waits as long as it
    takes. `holder_flow_run` names the flow run holding the lease in Prefect. With `stop_if_lease_lost`, a
    lease that cannot be renewed (the server unreachable for longer than its retries) stops the holder,
    because it no longer excludes anyone; otherwise the holder goes on and Prefect logs a warning.
    """
    flock = home.locks / f"{name}.lock"
    with contextlib.ExitStack() as stack:
        if limit and prefect_server_configured():
            ensure_concurrency_limit(limit)
            stack.enter_context(_slot(limit, timeout_s, lease_s, on_wait, holder_flow_run, stop_if_lease_lost))
        stack.enter_context(file_lock(flock, on_wait=None if on_wait is None else lambda: on_wait(
            f"the file lock {flock}, held by another process of this home")))
        yield


@contextlib.contextmanager
def _slot(limit: str, timeout_s: float | None, lease_s: float, on_wait, holder_flow_run: str, stop: bool):
    from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError, ConcurrencySlotAcquisitionError

    holder = ConcurrencyLeaseHolder(type="flow_run", id=holder_flow_run) if holder_flow_run else None
    take = dict(occupy=1, lease_duration=lease_s, strict=True, holder=holder, raise_on_lease_renewal_failure=stop)
    with contextlib.ExitStack() as stack:
        try:  # one attempt first, so that a waiter can say that it waits
            stack.enter_context(concurrency(limit, max_retries=0, **take))
        except ConcurrencySlotAcquisitionError as exc:
            if getattr(getattr(exc.__cause__, "response", None), "status_code", None) != HTTP_LOCKED:
                raise
            if on_wait is not None:
                on_wait(f"the Prefect global concurrency limit {limit!r}, shared by every worker of the server; a "
                        f"holder that died frees it within {lease_s:.0f} s")
            try:
                stack.enter_context(concurrency(limit, timeout_seconds=timeout_s, **take))
            except AcquireConcurrencySlotTimeoutError as timeout:
                raise LockTimeout(
                    f"waited {timeout_s:.0f} s for the Prefect global concurrency limit {limit!r} and it is still "
                    f"taken. See who holds it in the Prefect UI (Concurrency) or with `prefect gcl inspect {limit}`; "
                    "wait longer by raising the lock's timeout") from timeout
        yield
