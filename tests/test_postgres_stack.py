"""The verified scale-out recipe of docs/scale-out.md: MLflow and Prefect servers on PostgreSQL.

A throwaway cluster gets a database per server; `mlflow server` (proxied artifacts) and `prefect server
start` run on it. A separate continual-opd process, pointed at them only through `MLFLOW_TRACKING_URI`
and `PREFECT_API_URL`, runs a Prefect flow that registers two model versions and moves the aliases
with `continual_opd.registry`. The test then finds all of it in the servers' APIs *and* in PostgreSQL's
tables, and checks that everything it started is gone afterwards.
"""

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tools.postgres_stack import missing_reason, postgres_stack

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.server]

# What runs in the continual-opd process: a flow whose task registers and promotes through the registry.
CLIENT = r'''
import hashlib, json, os, sys, tempfile
from pathlib import Path

import continual_opd  # noqa: F401  (env defaults: only where unset, so the server URLs stay)
import mlflow
from prefect import flow, task

from continual_opd import registry
from continual_opd.tracking import stage_run

M = registry.STUDENT_MODEL


@task
def register_and_promote(folder: str) -> dict:
    with stage_run("scale-out-check", experiment="scale-out-check") as run:
        lineage = {"flow_run_id": run.data.tags["flow_run_id"], "method": "scale-out-check"}
        first = registry.register_folder(folder, M, run.info.run_id, lineage, "scale-out-1")
        second = registry.register_folder(folder, M, run.info.run_id, lineage, "scale-out-2")
        again = registry.register_folder(folder, M, run.info.run_id, lineage, "scale-out-1")
    c = registry.client()
    c.set_registered_model_alias(M, registry.CHAMPION, first.version)
    # a promotion: the champion moves on, previous-champion keeps the old one for rollback
    c.set_registered_model_alias(M, registry.PREVIOUS_CHAMPION, first.version)
    c.set_registered_model_alias(M, registry.CHAMPION, second.version)
    champion = registry.version_by_alias(M, registry.CHAMPION)
    champion.tags.pop("model_folder")  # as on another machine: the weights come from the artifact store
    fetched = registry.local_folder(champion)
    return {"first": first.version, "second": second.version, "again": again.version,
            "champion": champion.version, "source": champion.source, "run_id": run.info.run_id,
            "flow_run_id": lineage["flow_run_id"], "aliases": registry.aliases(M),
            "fetched": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in fetched.iterdir()
                        if p.is_file()}}


@flow(name="scale-out-check")
def scale_out_check(folder: str) -> dict:
    return register_and_promote(folder)


out = scale_out_check(sys.argv[1])
out["env"] = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
out["tracking_uri"] = mlflow.get_tracking_uri()
print("RESULT " + json.dumps(out))
'''


def _get(url: str, headers: dict | None = None, **query) -> dict:
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
        return json.loads(resp.read())


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_registry_and_flow_runs_land_in_postgresql(base_folder, tmp_path):
    reason = missing_reason()
    if reason:
        pytest.skip(f"no PostgreSQL here: {reason}")
    for module, need in (("psycopg2", "MLflow on PostgreSQL needs a driver"),
                         ("flask_wtf", "MLflow's basic-auth app needs Flask-WTF")):
        pytest.importorskip(module, reason=f"{need}: pip install -e '.[server]'")

    with postgres_stack(tmp_path / "stack") as stack:
        env = {**os.environ, **stack.client_env, "CONTINUAL_OPD_HOME": str(tmp_path / "client-home")}
        env.pop("PREFECT_HOME", None)
        proc = subprocess.run([sys.executable, "-c", CLIENT, str(base_folder)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])

        # the client used the servers it was given; the home's SQLite defaults did not override them
        assert out["env"] == {"MLFLOW_TRACKING_URI": stack.mlflow.url, "PREFECT_API_URL": stack.prefect.url}
        assert out["tracking_uri"] == stack.mlflow.url
        assert not (tmp_path / "client-home" / "mlflow.db").exists()
        assert (out["first"], out["second"], out["again"], out["champion"]) == ("1", "2", "1", "2")
        assert out["aliases"] == {"champion": "2", "previous-champion": "1"}

        # MLflow's REST API (behind basic auth) and its PostgreSQL tables agree
        api = f"{stack.mlflow.url}/api/2.0/mlflow"
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(f"{api}/registered-models/get", name="continual-opd-student")
        assert refused.value.code == 401
        auth = stack.mlflow_user.header()
        model = _get(f"{api}/registered-models/get", auth, name="continual-opd-student")["registered_model"]
        assert {a["alias"]: a["version"] for a in model["aliases"]} == out["aliases"]
        version = _get(f"{api}/model-versions/get", auth, name="continual-opd-student", version="2")["model_version"]
        assert {t["key"]: t["value"] for t in version["tags"]}["flow_run_id"] == out["flow_run_id"]
        rows = stack.cluster.psql("SELECT alias, version FROM registered_model_aliases ORDER BY alias", "mlflow")
        assert rows.splitlines() == ["champion|2", "previous-champion|1"]
        tag = stack.cluster.psql("SELECT value FROM model_version_tags WHERE version = 2 AND key = 'flow_run_id'",
                                 "mlflow")
        assert tag == out["flow_run_id"]
        grants = stack.cluster.psql(
            "SELECT u.username, p.resource_pattern, p.permission FROM role_permissions p JOIN user_role_assignments a "
            "ON a.role_id = p.role_id JOIN users u ON u.id = a.user_id WHERE p.resource_type = 'registered_model'",
            "mlflow_auth")
        assert grants == "continual-opd|continual-opd-student|MANAGE", "the service user created the model"

        # the password went only through the environment: not into params, tags, or any output or log
        password = stack.mlflow_user.password
        stored = stack.cluster.psql("SELECT string_agg(value, ' ') FROM (SELECT value FROM params UNION ALL "
                                    "SELECT value FROM tags UNION ALL SELECT value FROM model_version_tags) v",
                                    "mlflow")
        assert out["flow_run_id"] in stored and password not in stored
        assert password not in proc.stdout + proc.stderr
        for log in (tmp_path / "stack").glob("*.log"):
            assert password not in log.read_text(errors="replace"), log

        # the weights went through the server's artifact proxy into --artifacts-destination, intact
        assert out["source"].startswith("models:/")  # an MLflow Model, its files in the server's store
        weights = next(p.parent for p in stack.artifacts.rglob("model.safetensors"))
        assert _digests(weights) == _digests(Path(base_folder)) == out["fetched"]

        # Prefect's REST API and its PostgreSQL tables know the flow run, Completed
        flow_run = _get(f"{stack.prefect.url}/flow_runs/{out['flow_run_id']}")
        assert flow_run["state_type"] == "COMPLETED", flow_run["state"]
        state = stack.cluster.psql(
            f"SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
            f"WHERE r.id = '{out['flow_run_id']}'", "prefect")
        assert state == "scale-out-check|COMPLETED"
        tasks = stack.cluster.psql(f"SELECT state_type FROM task_run WHERE flow_run_id = '{out['flow_run_id']}'",
                                   "prefect")
        assert tasks == "COMPLETED"

    # everything started above is stopped, and the cluster is gone
    assert stack.mlflow.proc.poll() is not None and stack.prefect.proc.poll() is not None
    assert not stack.cluster.root.exists()
    for url in (stack.mlflow.health, stack.prefect.health):
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=2)
