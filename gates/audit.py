"""The audit trail: one MLflow run per decision or rollback, and the registry moves it records, undone as one.

Every decision and rollback is a run in the MLflow experiment `gate-decisions` with the policy file,
its version and hash, every metric, the checks, the decision, its reasons, the versions involved and
the report; version tags (`gate_decision`, `gate_reasons`, `gate_run_id`) say it too. MLflow keeps no
history of alias moves, so this trail is the history (`gates.views.history_text`).

The registry writes happen inside a Prefect transaction: each write is staged with an `on_rollback`
hook that undoes it, so if anything fails (tags, matrix rows, report, the alias move) the previous aliases,
tags and accuracy-matrix rows are put back and the audit run ends FAILED. The alias move is the last write:
a process *killed* mid-decision (no hook runs) leaves either no recorded decision, and the rerun decides
again, or a recorded one whose alias move the rerun completes (`finish_interrupted`); `champion` never
points at a version whose blessing is not yet written. The transaction commits eagerly: once a decision
is recorded, a failure later in the enclosing flow does not silently undo it. Outside a flow run (the
CLI's rollback) the transaction needs no API: it is a context-local object.
"""

import contextlib
import logging
import math
import tempfile
from pathlib import Path

from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext, TaskRunContext
from prefect.transactions import CommitMode, transaction

from continual_opd import accuracy_matrix, registry
from continual_opd.home import Home
from continual_opd.records import Decision, EvalReport
from continual_opd.tracking import code_revision, current_flow_run_id
from gates import report as report_mod
from gates.policy import LoadedPolicy, Verdict

GATE_EXPERIMENT = "gate-decisions"
BLESSED = ("promoted", "bootstrap")
MAX_TAG = 4000


def record_decision(*, event: str, promote: bool, model_name: str, new_champion: str, old_champion: str,
            compared_with: str, verdict: Verdict, policy: LoadedPolicy | None, report: EvalReport | None,
            home: Home, parent_run_id: str | None, extra_tags: dict[str, str],
            reasons_override: tuple[str, ...] = ()) -> tuple[Decision, str]:
    """One audit run and the transactional registry moves it records; returns the Decision and its markdown."""
    client = registry.client()
    outcome = ("promoted" if promote else "rejected") if event == "gate" else "rollback"
    if reasons_override:
        reasons = reasons_override
    elif promote:
        reasons = tuple(c.message for c in verdict.checks if c.passed)
    else:
        reasons = verdict.reasons
    policy_version = policy.version if policy else "rollback"
    tags = {"event": event, "gate_decision": outcome, "model_name": model_name,
            "candidate_version": new_champion, "champion_version": compared_with,
            "previous_champion_version": old_champion, "policy_version": policy_version,
            "gate_reasons": _clip(" | ".join(reasons)), "update_run_id": parent_run_id or "",
            "flow_run_id": current_flow_run_id(), "code_revision": code_revision(),
            "mlflow.runName": f"{event} v{new_champion} ({outcome})",
            **{k: str(v) for k, v in extra_tags.items()}}
    run = client.create_run(registry.experiment_id(GATE_EXPERIMENT), tags={**tags, "gate_decision": "pending"})
    rid = run.info.run_id
    decision = Decision(promoted=promote, reasons=tuple(reasons), policy_version=policy_version,
                        candidate_version=new_champion, champion_version=compared_with, audit_run_id=rid)
    markdown = ""
    try:
        if policy is not None:
            client.log_param(rid, "policy_path", str(policy.path))
            client.log_param(rid, "policy_sha256", policy.sha256)
            client.log_text(rid, policy.text, "gate/policy.yaml")
        if report is not None:
            for key, value in report.metrics().items():
                if math.isfinite(value):
                    client.log_metric(rid, key, value)
        client.log_dict(rid, [c.__dict__ for c in verdict.checks], "gate/checks.json")
        matrix_before = accuracy_matrix.snapshot(home, model_name)

        # The alias move comes last and everything a rerun needs comes before it: a process killed at any point
        # leaves either no decision (the rerun decides again) or a recorded one (the rerun completes it), and
        # `champion` never points at a version whose blessing is not yet written (tests/test_reliability_crash.py).
        with transaction(commit_mode=CommitMode.EAGER) as txn:
            if event == "gate":
                _set_version_tags(txn, model_name, new_champion, {
                    "gate_decision": outcome, "gate_reasons": _clip(" | ".join(reasons)), "gate_run_id": rid,
                    "gate_policy_version": policy_version})
            else:
                _set_version_tags(txn, model_name, new_champion, {"rollback_run_id": rid})
                if old_champion:
                    _set_version_tags(txn, model_name, old_champion, {
                        "rolled_back": "true", "rollback_reason": _clip(extra_tags.get("rollback_reason", "")),
                        "rollback_run_id": rid})
            txn.stage("accuracy-matrix", on_rollback_hooks=[_restore_matrix_hook(home, model_name, matrix_before)])
            _extend_matrix(home, model_name, old_champion, new_champion if promote else "", event,
                           extra_tags.get("target_skill", ""), rid)
            model = accuracy_matrix.load(home, model_name)
            client.log_dict(rid, model, "gate/accuracy_matrix.json")
            for key, value in accuracy_matrix.gem_metrics(model).items():
                if value is not None:
                    client.log_metric(rid, f"matrix/{key}", value)
            markdown = _write_report(client, rid, event, outcome, decision, verdict, report, policy_version,
                                     policy, accuracy_matrix.render_markdown(model_name, model))
            client.set_tag(rid, "gate_decision", outcome)
            if parent_run_id:
                client.set_tag(parent_run_id, "gate_decision", outcome)
                client.set_tag(parent_run_id, "gate_run_id", rid)
            client.log_dict(rid, decision.model_dump(mode="json"), "gate/decision.json")
            if promote:
                _move_aliases(txn, model_name, champion_to=new_champion, previous_to=old_champion or None)
    except BaseException as exc:
        try:
            client.set_tag(rid, "gate_decision", "error")
            client.set_tag(rid, "error", _clip(f"{type(exc).__name__}: {exc}"))
            client.set_terminated(rid, "FAILED")
        except Exception:  # the original error matters more than a failed error record
            pass
        raise
    client.set_terminated(rid, "FINISHED")  # the decision stands; if this fails, the rerun's decide() closes the run
    return decision, markdown


def close_interrupted(model_name: str, version: str, keep: str = "") -> None:
    """Mark audit runs of `version` left RUNNING by a killed process (we hold the gate lock: none is alive)."""
    client = registry.client()
    runs = client.search_runs([registry.experiment_id(GATE_EXPERIMENT)],
                              f"tags.model_name = '{model_name}' and tags.candidate_version = '{version}' and "
                              "attributes.status = 'RUNNING'")
    for run in runs:
        if run.info.run_id != keep:
            client.set_tag(run.info.run_id, "gate_decision", "interrupted")
            client.set_terminated(run.info.run_id, "KILLED")


def finish_interrupted(model_name: str, decision: Decision, parent_run_id: str | None) -> None:
    """Complete a recorded decision whose process was killed before its last step: the alias move (roll forward).

    Only while its audit run is still RUNNING: a finished decision is history, and `champion` may since have
    been moved on or rolled back on purpose.
    """
    client = registry.client()
    run = client.get_run(decision.audit_run_id)
    if run.info.status != "RUNNING":
        return
    if decision.promoted and registry.aliases(model_name).get(registry.CHAMPION, "") == decision.champion_version:
        if decision.champion_version:
            client.set_registered_model_alias(model_name, registry.PREVIOUS_CHAMPION, decision.champion_version)
        client.set_registered_model_alias(model_name, registry.CHAMPION, decision.candidate_version)
    if parent_run_id:
        client.set_tag(parent_run_id, "gate_decision", "promoted" if decision.promoted else "rejected")
        client.set_tag(parent_run_id, "gate_run_id", decision.audit_run_id)
    client.set_terminated(decision.audit_run_id, "FINISHED")


def _move_aliases(txn, model_name: str, champion_to: str, previous_to: str | None) -> None:
    client = registry.client()
    before = registry.aliases(model_name)

    def restore_aliases(_txn):
        c = registry.client()
        for alias in (registry.CHAMPION, registry.PREVIOUS_CHAMPION):
            if alias in before:
                c.set_registered_model_alias(model_name, alias, before[alias])
            else:
                with contextlib.suppress(Exception):
                    c.delete_registered_model_alias(model_name, alias)

    txn.stage({"aliases_before": before}, on_rollback_hooks=[restore_aliases])
    if previous_to:
        client.set_registered_model_alias(model_name, registry.PREVIOUS_CHAMPION, previous_to)
    client.set_registered_model_alias(model_name, registry.CHAMPION, champion_to)


def _set_version_tags(txn, model_name: str, version: str, tags: dict[str, str]) -> None:
    client = registry.client()
    old = dict(registry.get_version(model_name, version).tags)

    def restore_version_tags(_txn):
        c = registry.client()
        for key in tags:
            if key in old:
                c.set_model_version_tag(model_name, version, key, old[key])
            else:
                with contextlib.suppress(Exception):
                    c.delete_model_version_tag(model_name, version, key)

    txn.stage({"version": version, "tags_before": old}, on_rollback_hooks=[restore_version_tags])
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)


def _restore_matrix_hook(home: Home, model_name: str, rows: dict[str, str]):
    def restore_accuracy_matrix(_txn):
        accuracy_matrix.restore(home, model_name, rows)

    return restore_accuracy_matrix


def _extend_matrix(home: Home, model_name: str, old_champion: str, new_champion: str, event: str,
                   target_skill: str, run_id: str) -> None:
    """Start the matrix with the champion's row if it is empty, then add the new champion's row."""
    rows = accuracy_matrix.load(home, model_name)["rows"]
    if not rows and old_champion:
        accuracy_matrix.append_row(home, model_name, old_champion, "baseline")
    event_name = "promoted" if event == "gate" else event
    if rows and (rows[-1]["version"], rows[-1]["event"]) == (str(new_champion), event_name):
        return  # written by an attempt that was killed before it finished recording (never a new event)
    if new_champion:
        accuracy_matrix.append_row(home, model_name, new_champion, "promoted" if event == "gate" else event,
                                   target_skill if event == "gate" else "", run_id)


def _write_report(client, rid, event, outcome, decision, verdict, report, policy_version, policy,
                  matrix_markdown) -> str:
    title = "Gate decision" if event == "gate" else "Rollback"
    notes = []
    if policy is not None:
        notes.append(f"policy file `{policy.path}` (sha256 {policy.sha256[:12]})")
    markdown = report_mod.render_markdown(
        title=title, decision=outcome, reasons=list(decision.reasons) if not decision.promoted or event != "gate"
        else [], checks=verdict.checks, report=report or _empty_report(decision), policy_version=policy_version,
        candidate_version=decision.candidate_version, champion_version=decision.champion_version,
        matrix_markdown=matrix_markdown, notes=notes)
    client.log_text(rid, markdown, "gate/report.md")
    if report is not None and report.suites:
        margins = {c.metric[:-len("/acc")]: c.limit for c in verdict.checks
                   if c.kind == "change" and c.passed is not None and c.limit is not None}
        with tempfile.TemporaryDirectory() as tmp:
            chart = report_mod.render_chart(report, Path(tmp) / "chart.png", margins,
                                            title=f"{outcome}: v{decision.candidate_version} vs "
                                                  f"v{decision.champion_version or 'none'}")
            client.log_artifact(rid, str(chart), "gate")
            client.log_text(rid, report_mod.render_html(markdown, chart), "gate/report.html")
    return markdown


def _empty_report(decision: Decision) -> EvalReport:
    return EvalReport(champion_version=decision.champion_version, candidate_version=decision.candidate_version,
                      suites={}, kl_core=math.nan, items_path="")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TAG else text[:MAX_TAG - 3] + "..."


def publish_prefect_markdown(markdown: str, decision: Decision) -> None:
    """The report as a Prefect markdown artifact, when called inside a flow or task run."""
    if not markdown or (FlowRunContext.get() is None and TaskRunContext.get() is None):
        return
    try:
        create_markdown_artifact(markdown, key="gate-report",
                                 description=f"gate: v{decision.candidate_version} "
                                             f"{'promoted' if decision.promoted else 'rejected'}")
    except Exception as exc:  # cosmetic: the decision is already recorded in MLflow
        logging.getLogger(__name__).warning(f"could not create the Prefect markdown artifact: {exc}")


def recorded_decision(model_name: str, version: str) -> Decision | None:
    """The decision already recorded for this candidate version, if any (for reruns after a crash)."""
    import mlflow

    tags = registry.get_version(model_name, version).tags
    rid = tags.get("gate_run_id")
    if tags.get("gate_decision") not in ("promoted", "rejected") or not rid:
        return None
    run = registry.client().get_run(rid)
    try:
        data = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/gate/decision.json")
    except Exception:
        return None
    return Decision.model_validate(data)


# ---- status and history, for the CLI ----
