"""How many torch threads a test may train with.

`make test` runs the suite in two pytest-xdist workers, one per core of the 2-core CI machine. Each worker then
trains with one thread: two workers of two threads each would oversubscribe the cores and slow both several
times over. Run alone (plain `pytest`), a test may use both cores.
"""

import os

IN_PARALLEL = bool(os.environ.get("PYTEST_XDIST_WORKER"))
TORCH_THREADS = 1 if IN_PARALLEL else 2


def limit_native_threads() -> None:
    """In a parallel worker, one OpenMP/MKL thread for this process and the processes it starts."""
    if IN_PARALLEL:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")
