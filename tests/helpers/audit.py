"""Reading one gate audit run back (tags, metrics, params, status, decision), for tests."""

import contextlib

from continual_opd import registry


def audit_record(run_id: str) -> dict:
    """The tags and decision of one audit run in the `gate-decisions` experiment."""
    import mlflow

    run = registry.client().get_run(run_id)
    out = {"tags": dict(run.data.tags), "metrics": dict(run.data.metrics), "params": dict(run.data.params),
           "status": run.info.status}
    with contextlib.suppress(Exception):
        out["decision"] = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/gate/decision.json")
    return out
