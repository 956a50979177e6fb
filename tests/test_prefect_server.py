"""The deployments, through a real Prefect server: deploy prefect.yaml, a process worker, a manual run.

Also opens the Prefect UI in headless Chromium and keeps screenshots (test-artifacts/): the parameter form the
flow's pydantic model produces for the `manual` deployment, and a running update's progress artifact.
"""

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers.local_servers import ARTIFACTS, chromium, free_port, render

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(scope="module")
def stack(champion, tmp_path_factory):
    """A Prefect server + worker on a free port, with its own PREFECT_HOME; stopped afterwards."""
    from cli.stack import start_prefect_stack, stop

    port = free_port()
    prefect_home = tmp_path_factory.mktemp("prefect-server-home")
    # One torch thread in the worker's flow runs: beside the server, this test and Chromium, two threads on the
    # 2-core CI machine oversubscribe the cores and training slows several times over.
    env = {"PREFECT_HOME": str(prefect_home), "PWD": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
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


def _api(stack, path: str, body: dict | None = None):
    request = urllib.request.Request(f"{stack['api']}{path}", data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"}, method="POST" if body else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_prefect_ui_shows_the_parameter_form(stack):
    browser = chromium()
    deployments = _prefect(stack, "deployment", "inspect", "continual-update/manual")
    assert deployments.returncode == 0, deployments.stderr
    dep_id = next(line.split("'")[3] for line in deployments.stdout.splitlines() if "'id'" in line)
    url = f"http://127.0.0.1:{stack['port']}/deployments/deployment/{dep_id}/run"
    shot = ARTIFACTS / "prefect-manual-run-form.png"
    dom = render(browser, url, shot)
    assert shot.is_file() and shot.stat().st_size > 10_000
    for text in ("Batch file to learn from", "Teacher RL (GRPO) settings", "Promotion gate settings"):
        assert text in dom, f"{text!r} not on the run form at {url}"


def test_prefect_ui_shows_a_running_updates_progress(stack, home):
    """While an update runs, the running stage's page lists its progress artifact, which moves to 100% by the end;
    screenshots of the stage's page and of the artifact are kept."""
    from continual_opd.batch_io import write_jsonl
    from demo_world.skills import CATALOGUE

    browser = chromium()
    batch = write_jsonl(CATALOGUE["add"].items("train", 256, seed=4343), home.inbox / "server-progress.jsonl")
    smoke = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    teacher = {**smoke["teacher"], "steps": 24, "early_stop_accuracy": 1.0}  # long enough to be seen running (~30 s)
    params = {"params": {**smoke, "teacher": teacher, "batch": str(batch)}}
    started = _prefect(stack, "deployment", "run", "continual-update/manual", "--params", json.dumps(params))
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    run_id = next(line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line)

    def running_teacher_progress():
        found = _api(stack, "/artifacts/filter", {"artifacts": {"type": {"any_": ["progress"]},
                                                               "flow_run_id": {"any_": [run_id]}}})
        return next((a for a in found if a["key"] == "progress-teacher-rl" and 0 < a["data"] < 100), None)

    deadline = time.time() + 600
    while (artifact := running_teacher_progress()) is None:
        assert _api(stack, f"/flow_runs/{run_id}")["state"]["type"] not in ("FAILED", "CRASHED", "COMPLETED")
        assert time.time() < deadline, "no teacher progress artifact appeared while the update ran"
        time.sleep(1)

    ui = f"http://127.0.0.1:{stack['port']}"
    task_page = render(browser, f"{ui}/runs/task-run/{artifact['task_run_id']}?tab=Artifacts",
                        ARTIFACTS / "prefect-running-update-progress.png")
    assert "progress-teacher-rl" in task_page and "Running" in task_page, "the running stage lists its progress"
    artifact_page = render(browser, f"{ui}/artifacts/artifact/{artifact['id']}",
                            ARTIFACTS / "prefect-progress-artifact.png")
    shown = re.search(r"Progress: ([\d.]+)%", artifact_page)
    assert shown and 0 < float(shown.group(1)) <= 100, artifact_page[-2000:]
    assert re.search(r"teacher-rl: \d+/24 \(\d+%\)", artifact_page), "the description is the stage's progress line"

    while _api(stack, f"/flow_runs/{run_id}")["state"]["type"] not in ("FAILED", "CRASHED", "COMPLETED",
                                                                         "CANCELLED"):
        assert time.time() < deadline + 600, "the update did not finish"
        time.sleep(2)
    final = {a["key"]: a["data"] for a in _api(stack, "/artifacts/filter", {
        "artifacts": {"type": {"any_": ["progress"]}, "flow_run_id": {"any_": [run_id]}}})}
    assert final.get("progress-teacher-rl") == 100, final
