"""The gate's lock: decisions and rollbacks of one registered model happen one at a time.

MLflow alias moves are last-writer-wins and MLflow keeps no history of them, so two gates deciding at
once could both promote. Every decision and rollback holds `continual_opd.locking.exclusive`: the flock
`<home>/locks/gate.lock` and, when a Prefect server is configured, one leased slot of its global
concurrency limit (`continual-opd-gate` by default), which serialises homes on several machines. A gate
whose lease can no longer be renewed stops rather than move aliases unguarded.
"""

import contextlib

from continual_opd.home import Home
from continual_opd.locking import exclusive
from continual_opd.tracking import current_flow_run_id


@contextlib.contextmanager
def gate_lock(home: Home, concurrency_limit: str = "", timeout_s: float = 1800.0):
    """Prefect's global concurrency slot (on a shared server), then the home's flock (across processes)."""
    with exclusive(home, "gate", limit=concurrency_limit, timeout_s=timeout_s,
                   holder_flow_run=current_flow_run_id()):
        yield
