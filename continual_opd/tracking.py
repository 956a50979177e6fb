"""MLflow runs for stages: nested under the update's run, tagged with the Prefect flow-run id.

MLflow's active run is thread-local (FACTS.md) and Prefect may run tasks in worker threads, so stages
never rely on an ambient active run: they receive `parent_run_id` and open their own nested run.
"""

import contextlib
import os
import subprocess
from pathlib import Path

UPDATES_EXPERIMENT = "continual-updates"


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

    from continual_opd import registry

    registry.client()  # points mlflow at the home's store
    exp_id = registry.experiment_id(experiment)
    all_tags = {"stage": stage, "flow_run_id": current_flow_run_id(), "code_revision": code_revision(),
                **(tags or {})}
    with mlflow.start_run(experiment_id=exp_id, run_name=stage, nested=parent_run_id is not None,
                          parent_run_id=parent_run_id, tags=all_tags) as run:
        yield run
