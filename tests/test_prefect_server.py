"""The deployments, through a real Prefect server: deploy prefect.yaml, a process worker, a manual run.

Also opens the Prefect UI's run form for the `manual` deployment in headless Chromium and keeps a
screenshot (test-artifacts/) of the parameter form the flow's pydantic model produces.
"""

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [pytest.mark.slow, pytest.mark.server]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(champion, tmp_path_factory):
    """A Prefect server + worker on a free port, with its own PREFECT_HOME; stopped afterwards."""
    from cli.stack import start_prefect_stack, stop

    port = free_port()
    prefect_home = tmp_path_factory.mktemp("prefect-server-home")
    env = {"PREFECT_HOME": str(prefect_home), "PWD": str(ROOT)}
    procs, api = start_prefect_stack(port, env=env, log_dir=prefect_home)
    try:
        yield {"port": port, "api": api, "env": {**os.environ, **env, "PREFECT_API_URL": api}, "logs": prefect_home}
    finally:
        stop(procs)
    assert all(p.poll() is not None for p in procs)


def _prefect(stack, *args, timeout=60):
    return subprocess.run([str(Path(os.sys.executable).parent / "prefect"), *args], env=stack["env"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_manual_deployment_runs_an_update_through_server_and_worker(stack, home, tmp_path):
    from continual_opd import registry
    from demo_world.skills import CATALOGUE
    from continual_opd.batch_io import write_jsonl

    batch = write_jsonl(CATALOGUE["add"].items("train", 256, seed=4242), home.inbox / "server-test.jsonl")
    smoke = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    params = {"params": {**smoke, "batch": str(batch)}}
    before = {v.version for v in registry.client().search_model_versions(f"name='{registry.STUDENT_MODEL}'")}

    result = _prefect(stack, "deployment", "run", "continual-update/manual", "--params", json.dumps(params),
                      "--watch", "--watch-timeout", "900", timeout=960)
    worker_log = (stack["logs"] / "prefect-worker.log").read_text()[-3000:]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + worker_log
    assert "Completed" in result.stdout, result.stdout[-2000:]

    versions = registry.client().search_model_versions(f"name='{registry.STUDENT_MODEL}'")
    new = [v for v in versions if str(v.version) not in {str(b) for b in before}]
    assert len(new) == 1, "one update registers exactly one candidate version"
    tags = new[0].tags
    for key in registry.LINEAGE_TAGS:
        assert tags.get(key), f"lineage tag {key} missing on v{new[0].version}: {tags}"
    assert tags["flow_run_id"] != ""
    assert tags["gate_decision"] in {"promoted", "rejected"}
    champion = registry.version_by_alias(registry.STUDENT_MODEL, registry.CHAMPION)
    expected = new[0].version if tags["gate_decision"] == "promoted" else tags["parent_version"]
    assert str(champion.version) == str(expected)


def test_prefect_ui_shows_the_parameter_form(stack):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium): the UI form was not rendered")
    deployments = _prefect(stack, "deployment", "inspect", "continual-update/manual")
    assert deployments.returncode == 0, deployments.stderr
    dep_id = next(line.split("'")[3] for line in deployments.stdout.splitlines() if "'id'" in line)
    url = f"http://127.0.0.1:{stack['port']}/deployments/deployment/{dep_id}/run"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,2400",
             "--virtual-time-budget=20000", f"--user-data-dir={ARTIFACTS / 'chromium-profile'}"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "prefect-manual-run-form.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    shutil.rmtree(ARTIFACTS / "chromium-profile", ignore_errors=True)
    assert shot.is_file() and shot.stat().st_size > 10_000
    for text in ("Batch file to learn from", "Teacher RL (GRPO) settings", "Promotion gate settings"):
        assert text in dom, f"{text!r} not on the run form at {url}"
