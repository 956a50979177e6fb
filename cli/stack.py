"""The local stack on 127.0.0.1: a Prefect server with a process worker, and the MLflow UI on the home's store.

`serve` starts what it needs, deploys `prefect.yaml`, and stops everything it started on Ctrl-C.
"""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from continual_opd.home import current_home, prepare_stores

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where prefect.yaml is
WORK_POOL = "continual-opd"


def venv_bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def start_prefect_stack(port: int = 4200, env: dict | None = None, log_dir: Path | None = None):
    """Start server + worker and deploy; returns (processes, api_url). The caller stops the processes."""
    home = prepare_stores(current_home())
    env = {**os.environ, **(env or {})}
    api = f"http://127.0.0.1:{port}/api"
    env["PREFECT_API_URL"] = api
    log_dir = log_dir or (home.root / "logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    prefect = venv_bin("prefect")
    procs = []
    server_log = open(log_dir / "prefect-server.log", "w")
    procs.append(subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=server_log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT))
    wait_http(f"{api}/health")
    run = lambda *a: subprocess.run([prefect, *a], env=env, cwd=PROJECT_ROOT, check=True,  # noqa: E731
                                    capture_output=True, text=True)
    subprocess.run([prefect, "work-pool", "create", WORK_POOL, "--type", "process"], env=env, cwd=PROJECT_ROOT,
                   capture_output=True, text=True)  # already exists is fine
    run("--no-prompt", "deploy", "--all")
    worker_log = open(log_dir / "prefect-worker.log", "w")
    procs.append(subprocess.Popen([prefect, "worker", "start", "--pool", WORK_POOL], env=env, stdout=worker_log,
                                  stderr=subprocess.STDOUT, cwd=PROJECT_ROOT))
    return procs, api


def stop(procs) -> None:
    """SIGTERM each process, then SIGKILL what is still up after 20 s; returns once all have exited."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)  # reap it: without this a killed server could still look alive to the caller


def serve(port: int = 4200) -> int:
    procs, api = start_prefect_stack(port)
    print(f"Prefect UI: http://127.0.0.1:{port}  (API {api}); work pool '{WORK_POOL}' has a worker.")
    print("Run an update from the UI: Deployments -> continual-update/manual -> Run -> Custom run.")
    print("Press Ctrl-C to stop the server and the worker.")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        stop(procs)
    return 0


def mlflow_ui(port: int = 5000) -> int:
    home = prepare_stores(current_home())
    uri = os.environ.get("MLFLOW_TRACKING_URI", home.tracking_uri)
    print(f"MLflow UI on {uri}: http://127.0.0.1:{port}  (Ctrl-C to stop)")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.call([venv_bin("mlflow"), "ui", "--backend-store-uri", uri, "--default-artifact-root",
                            home.artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(port)], env=env)
