"""MLflow runs for stages: nested under the update's run, tagged with the Prefect flow-run id.

MLflow's active run is thread-local and Prefect may run tasks in worker threads, so stages
never rely on an ambient active run: they receive `parent_run_id` and open their own nested run.
"""

import contextlib
import os
import subprocess
from pathlib import Path

from continual_opd import registry

UPDATES_EXPERIMENT = "continual-updates"


class MetricBuffer:
    """Step-indexed metrics written to a run in batches: one SQLite write per flush, not per value."""

    def __init__(self, run_id: str):
        self.run_id, self.pending = run_id, []

    def add(self, values: dict[str, float], step: int) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, float(v), now, step) for k, v in values.items()
                            if isinstance(v, int | float) and math.isfinite(v))

    def flush(self) -> None:
        client = registry.client()
        while self.pending:
            chunk, self.pending = self.pending[:1000], self.pending[1000:]
            client.log_batch(self.run_id, metrics=chunk)


def code_revision() -> str:
    """The git commit of the code (with `+dirty` when the tree has changes), or `unknown`."""
    if os.environ.get("CONTINUAL_OPD_CODE_REVISION"):
        return os.environ["CONTINUAL_OPD_CODE_REVISION"]
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("+dirty" if dirty else "")) if rev else "unknown"


def current_flow_run_id() -> str:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or "")
    except Exception:
        return ""


@contextlib.contextmanager
def stage_run(stage: str, parent_run_id: str | None = None, experiment: str = UPDATES_EXPERIMENT,
              tags: dict[str, str] | None = None):
    """Open an MLflow run for one stage (nested under `parent_run_id` when given) and yield it."""
    import mlflow

    registry.client()  # points mlflow at the home's store
    exp_id = registry.experiment_id(experiment)
    all_tags = {"stage": stage, "flow_run_id": current_flow_run_id(), "code_revision": code_revision(),
                **(tags or {})}
    with mlflow.start_run(experiment_id=exp_id, run_name=stage, nested=parent_run_id is not None,
                          parent_run_id=parent_run_id, tags=all_tags) as run:
        yield run


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value
    return out


def open_update_run(params, champion) -> tuple[str, str]:
    """Create the parent MLflow run of one update; returns (run_id, a link to it in the MLflow UI)."""
    client = registry.client()
    exp_id = registry.experiment_id(UPDATES_EXPERIMENT)
    tags = {"stage": "update", "flow_run_id": current_flow_run_id(), "code_revision": code_revision(),
            "champion_version": champion.version, "student_model": champion.name,
            "batch": str(params.batch), "config_hash": params.config_hash(), "mlflow.runName": "continual-update"}
    run = client.create_run(exp_id, tags=tags)
    flat = _flatten("", params.model_dump(mode="json"), {})
    for key, value in flat.items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    ui = os.environ.get("CONTINUAL_OPD_MLFLOW_UI", "http://127.0.0.1:5000")
    return run.info.run_id, f"{ui}/#/experiments/{exp_id}/runs/{run.info.run_id}"


def interrupted_update(params) -> str | None:
    """The champion version of the latest attempt at this update whose process was killed, or None.

    A killed update (SIGKILL, OOM, power loss) never ends its MLflow run. Its rerun must compare against the
    same champion: then every finished stage is a task-cache hit and the gate finds its own recorded decision,
    even when the killed attempt had already moved `champion` to its candidate (which a fresh read would take
    for the champion and train against). Such runs are closed here as KILLED, tagged `outcome=interrupted`
    with the stage they died in. Call it holding the update lock: then no live update owns one (with a Prefect
    server, on any machine).
    """
    client = registry.client()
    exp = client.get_experiment_by_name(UPDATES_EXPERIMENT)
    if exp is None:
        return None
    runs = [r for r in client.search_runs([exp.experiment_id],
                                          "tags.stage = 'update' and attributes.status = 'RUNNING'",
                                          order_by=["attributes.start_time DESC"])
            if r.data.tags.get("batch") == str(params.batch) and r.data.tags.get("student_model") == params.student_model]
    for run in runs:
        client.set_tag(run.info.run_id, "outcome", "interrupted")
        client.set_tag(run.info.run_id, "failed_stage", run.data.tags.get("current_stage", "start"))
        client.set_terminated(run.info.run_id, "KILLED")
    return runs[0].data.tags.get("champion_version") if runs else None


def set_stage(run_id: str, stage: str) -> None:
    registry.client().set_tag(run_id, "current_stage", stage)


def update_run_for_flow_run(flow_run_id: str) -> str | None:
    client = registry.client()
    exp = client.get_experiment_by_name(UPDATES_EXPERIMENT)
    if exp is None or not flow_run_id:
        return None
    runs = client.search_runs([exp.experiment_id],
                              f"tags.flow_run_id = '{flow_run_id}' and tags.stage = 'update'", max_results=1)
    return runs[0].info.run_id if runs else None


def close_update_run(run_or_flow_run_id: str, failed_state=None, decision=None) -> None:
    """End the update's MLflow run: FINISHED with the outcome, or FAILED with the stage it failed in."""
    client = registry.client()
    run_id = update_run_for_flow_run(run_or_flow_run_id) if failed_state is not None else run_or_flow_run_id
    if run_id is None:
        return
    if failed_state is None:
        client.set_tag(run_id, "outcome", "promoted" if decision.promoted else "rejected")
        client.set_terminated(run_id, "FINISHED")
        return
    run = client.get_run(run_id)
    stage = run.data.tags.get("current_stage", "start")
    message = getattr(failed_state, "message", "") or ""
    client.set_tag(run_id, "outcome", "failed")
    client.set_tag(run_id, "failed_stage", stage)
    client.set_tag(run_id, "failure", message[:5000])
    client.set_terminated(run_id, "FAILED")
