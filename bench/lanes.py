"""Benchmark parts as separate processes: a fresh interpreter per part, each with its own home and log.

A separate process per part keeps measurements apart: nothing a part loaded (models, a vLLM engine, torch's
peak-memory counters, threads) carries into the next. `run_lanes` runs (name, argv, home) jobs `lanes` at a
time with `CONTINUAL_OPD_HOME=home` and one torch thread each, logging each job to `<home>/<log>`.
"""

import os
import subprocess
import time
from pathlib import Path


def part_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_HOME", "PREFECT_API_URL")}
    return {**env, "CONTINUAL_OPD_HOME": str(home), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_lanes(jobs: list[tuple[str, list[str], Path]], lanes: int, log, keep_going: bool = False,
              log_name=lambda name: "bench.log", timeout: float | None = None) -> dict[str, float]:
    """Run (name, argv, home) jobs, `lanes` at a time, in order. Returns seconds per finished job.

    A failed job (or one killed after `timeout` seconds) stops the run (`SystemExit` naming its log), or with
    `keep_going` is logged, left out of the result and the next job starts.
    """
    pending, running, seconds = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < lanes:
            name, argv, home = pending.pop(0)
            home.mkdir(parents=True, exist_ok=True)
            logf = open(home / log_name(name), "w")
            log(f"start {name} (log: {logf.name})")
            running[name] = (subprocess.Popen(argv, env=part_env(home), stdout=logf, stderr=subprocess.STDOUT),
                             time.perf_counter(), logf)
        time.sleep(2)
        for name, (proc, started, logf) in list(running.items()):
            if proc.poll() is None and timeout is not None and time.perf_counter() - started > timeout:
                log(f"{name} ran past {timeout:.0f}s: killing it")
                proc.kill()
                proc.wait()
            if proc.poll() is None:
                continue
            logf.close()
            del running[name]
            elapsed = time.perf_counter() - started
            log(f"done {name}: exit {proc.returncode} after {elapsed:.0f}s")
            if proc.returncode == 0:
                seconds[name] = elapsed
            elif not keep_going:
                for other, (p, _, _) in running.items():
                    p.terminate()
                raise SystemExit(f"bench part {name} failed (exit {proc.returncode}); see {Path(logf.name)}")
    return seconds
