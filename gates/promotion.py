"""The gate's decision, the registry moves it causes, rollback, and the audit trail that records them.

Safety under concurrency. MLflow alias moves are last-writer-wins and keep no history (FACTS.md), so:
- every decision and rollback runs under an flock on `<home>/locks/gate.lock` and, when a Prefect server
  is configured (`PREFECT_API_URL`), under its global concurrency limit (`continual-opd-gate`, one slot,
  created when missing), which serialises homes on several machines. The embedded default has no
  server: each process's ephemeral API cannot revoke the lease of a holder that was killed, so its slot
  would stay taken and block every later gate of the home for good; the flock, which the kernel releases
  with the process, is the lock there (tests/test_reliability_crash.py);
- inside the lock the champion is read again; if it is no longer the version the candidate was
  evaluated against, the candidate is rejected ("champion moved ... rerun against the new champion"),
  so two updates started from the same champion can never both be promoted;
- the registry writes happen inside a Prefect transaction: each write is staged with an `on_rollback`
  hook that undoes it, so if anything fails (tags, matrix, report, the alias move) the previous
  aliases, tags and accuracy matrix are put back and the audit run ends FAILED. The alias move is the
  last write: a process *killed* mid-decision (no hook runs) leaves either no recorded decision, and the
  rerun decides again, or a recorded one whose alias move the rerun completes; `champion` never points at
  a version whose blessing is not yet written. The transaction commits
  eagerly: once a decision is recorded, a failure later in the enclosing flow does not silently undo it.
  Outside a flow run (the CLI's rollback) the transaction needs no API: it is a context-local object.

Audit trail. Every decision and rollback is a run in the MLflow experiment `gate-decisions` with the
policy file, its version and hash, every metric, the checks, the decision, its reasons, the versions
involved and the report; version tags (`gate_decision`, `gate_reasons`, `gate_run_id`) say it too.
Since MLflow keeps no alias history, this trail is the history (`history_text`).
"""

import contextlib
import math
import tempfile
import threading
import time
from pathlib import Path

from pydantic import Field, model_validator

from continual_opd import registry
from continual_opd.config import StrictConfig
from continual_opd.home import Home, current_home, file_lock, prepare_stores
from continual_opd.records import Candidate, Decision, EvalReport, ModelRef
from gates import accuracy_matrix
from gates.policy import DEFAULT_POLICY, LoadedPolicy, Verdict, evaluate_policy, load_policy

GATE_EXPERIMENT = "gate-decisions"
BLESSED = ("promoted", "bootstrap")
MAX_TAG = 4000
_PREFECT_CLIENT_START = threading.Lock()  # Prefect's ephemeral API start is not thread-safe


class GateConfig(StrictConfig):
    policy: str = Field(default="default", description="Gate policy YAML path; 'default' is the packaged "
                                                        "gates/default_policy.yaml.")
    concurrency_limit: str = Field(default="continual-opd-gate", description="Prefect global concurrency limit "
                                   "(1 slot) held while deciding when a Prefect server is configured; empty to rely "
                                   "on the home's file lock only.")
    lock_timeout_s: float = Field(default=1800.0, gt=0, description="Seconds to wait for the gate's lock.")

    def policy_path(self) -> Path:
        return DEFAULT_POLICY if self.policy in ("", "default") else Path(self.policy).expanduser()

    @model_validator(mode="after")
    def _policy_loads(self):
        """Fail when the update starts, not after minutes of training, if the policy file is wrong."""
        load_policy(self.policy_path())
        return self


class RollbackRefused(ValueError):
    """The rollback was refused; the message says why and what to do."""


def _aliases(model_name: str) -> dict[str, str]:
    """alias -> version as strings (MLflow's SQL store hands versions back as ints)."""
    return {alias: str(version) for alias, version in registry.aliases(model_name).items()}


@contextlib.contextmanager
def gate_lock(cfg: GateConfig, home: Home):
    """Prefect's global concurrency slot (on a shared server), then the home's flock (across processes)."""
    if cfg.concurrency_limit and prefect_server_configured():
        from prefect.concurrency.sync import concurrency

        ensure_concurrency_limit(cfg.concurrency_limit)
        with concurrency(cfg.concurrency_limit, occupy=1, timeout_seconds=cfg.lock_timeout_s, strict=True):
            with file_lock(home.locks / "gate.lock"):
                yield
    else:
        with file_lock(home.locks / "gate.lock"):
            yield


def prefect_server_configured() -> bool:
    """True when flows talk to a Prefect server (which revokes a dead holder's lease), not an ephemeral API."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def ensure_concurrency_limit(name: str, limit: int = 1) -> None:
    """Create the Prefect global concurrency limit if it does not exist (like `prefect gcl create NAME --limit 1`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with _PREFECT_CLIENT_START, get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
        except ObjectAlreadyExists:
            pass


def decide(report: EvalReport, candidate: Candidate, champion: ModelRef | None, cfg: GateConfig, home: Home,
           parent_run_id: str | None = None) -> Decision:
    """Apply the policy to the report, record the decision, and promote or reject the candidate.

    Idempotent per candidate version: deciding a candidate that already has a recorded decision returns it.
    """
    from continual_opd.skills import CORE_SKILLS
    from tasks.evaluate import report_metrics

    policy = load_policy(cfg.policy_path())
    model_name = candidate.model.name
    expected = champion.version if champion is not None else ""
    if report.candidate_version != candidate.model.version:
        raise ValueError(f"the report evaluates v{report.candidate_version}, not the candidate "
                         f"v{candidate.model.version}")
    if report.champion_version != expected:
        raise ValueError(f"the report compares against v{report.champion_version or 'none'} but the champion passed "
                         f"is v{expected or 'none'}; evaluate against the champion you gate against")
    if candidate.model.version == expected:
        raise ValueError(f"v{expected} is the champion itself; a candidate must be a new version")
    home = prepare_stores(home)
    target = report.target_skill or next(iter(report.suites))
    core = [c for c in CORE_SKILLS if c != target]

    with gate_lock(cfg, home):
        earlier = recorded_decision(model_name, candidate.model.version)
        _close_interrupted(model_name, candidate.model.version, keep=earlier.audit_run_id if earlier else "")
        if earlier is not None:
            _finish_interrupted(model_name, earlier, parent_run_id)
            return earlier
        current = _aliases(model_name).get(registry.CHAMPION, "")
        taught = [t for t in accuracy_matrix.taught_skills(home, model_name) if t != target]
        if current != expected:
            verdict = Verdict(False, (f"champion moved from v{expected or 'none'} to v{current or 'none'} during the "
                                      "update; rerun against the new champion",), ())
        else:
            verdict = evaluate_policy(policy.policy, report_metrics(report), target, core, taught,
                                      has_champion=bool(expected))
        decision, markdown = _record(
            event="gate", promote=verdict.blessed, model_name=model_name, new_champion=candidate.model.version,
            old_champion=current, compared_with=expected, verdict=verdict, policy=policy, report=report,
            home=home, parent_run_id=parent_run_id,
            extra_tags={"target_skill": target, "method": candidate.method,
                        "parent_version": candidate.parent_version, "teacher_version": candidate.teacher_version,
                        "eval_run_id": report.run_id, "candidate_run_id": candidate.run_id})
    _publish_prefect_markdown(markdown, decision)
    return decision


def rollback(to_version: str, reason: str, force: bool = False, model_name: str = registry.STUDENT_MODEL,
             cfg: GateConfig | None = None, home: Home | None = None) -> Decision:
    """Move `champion` back to `to_version` (and `previous-champion` to the current one), recorded in the trail.

    Refused: an unknown version, the current champion, an empty reason, and, unless `force`, a version
    that was never blessed (gate_decision not in promoted/bootstrap).
    """
    cfg = cfg or GateConfig()
    home = prepare_stores(home or current_home())
    to_version = str(to_version).lstrip("v")
    if not reason or not reason.strip():
        raise RollbackRefused("a rollback needs a reason (--reason TEXT): it goes into the audit trail")
    with gate_lock(cfg, home):
        try:
            target = registry.get_version(model_name, to_version)
        except registry.RegistryError:
            raise RollbackRefused(f"{model_name} has no version {to_version}; `continual-opd status` lists the "
                                  "versions") from None
        current = _aliases(model_name).get(registry.CHAMPION, "")
        if current == to_version:
            raise RollbackRefused(f"v{to_version} is already the champion of {model_name}; nothing to roll back")
        blessed = target.tags.get("gate_decision") in BLESSED
        if not blessed and not force:
            raise RollbackRefused(
                f"v{to_version} of {model_name} was never blessed (gate_decision="
                f"{target.tags.get('gate_decision', 'none')}): the gate never promoted it. Pass --force to make "
                "it champion anyway (recorded as a forced rollback)")
        note = f"rollback from v{current or 'none'} to v{to_version}: {reason.strip()}"
        if not blessed:
            note += " (forced: the version was never blessed)"
        verdict = Verdict(True, (), ())
        decision, _ = _record(event="rollback", promote=True, model_name=model_name, new_champion=to_version,
                              old_champion=current, compared_with=current, verdict=verdict, policy=None,
                              report=None, home=home, parent_run_id=None, reasons_override=(note,),
                              extra_tags={"rollback_reason": reason.strip(), "forced": str(not blessed).lower()})
    return decision


def _record(*, event: str, promote: bool, model_name: str, new_champion: str, old_champion: str,
            compared_with: str, verdict: Verdict, policy: LoadedPolicy | None, report: EvalReport | None,
            home: Home, parent_run_id: str | None, extra_tags: dict[str, str],
            reasons_override: tuple[str, ...] = ()) -> tuple[Decision, str]:
    """One audit run and the transactional registry moves it records; returns the Decision and its markdown."""
    from prefect.transactions import CommitMode, transaction

    from continual_opd.tracking import code_revision, current_flow_run_id

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
            from tasks.evaluate import report_metrics

            for key, value in report_metrics(report).items():
                if math.isfinite(value):
                    client.log_metric(rid, key, value)
        client.log_dict(rid, [c.__dict__ for c in verdict.checks], "gate/checks.json")
        matrix_before = accuracy_matrix.snapshot(home)

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
            txn.stage("accuracy-matrix", on_rollback_hooks=[_restore_matrix_hook(home, matrix_before)])
            _extend_matrix(home, model_name, old_champion, new_champion if promote else "", event,
                           extra_tags.get("target_skill", ""), rid)
            model = accuracy_matrix.load(home)["models"].get(model_name, {"accuracy": {}, "rows": []})
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


def _close_interrupted(model_name: str, version: str, keep: str = "") -> None:
    """Mark audit runs of `version` left RUNNING by a killed process (we hold the gate lock: none is alive)."""
    client = registry.client()
    runs = client.search_runs([registry.experiment_id(GATE_EXPERIMENT)],
                              f"tags.model_name = '{model_name}' and tags.candidate_version = '{version}' and "
                              "attributes.status = 'RUNNING'")
    for run in runs:
        if run.info.run_id != keep:
            client.set_tag(run.info.run_id, "gate_decision", "interrupted")
            client.set_terminated(run.info.run_id, "KILLED")


def _finish_interrupted(model_name: str, decision: Decision, parent_run_id: str | None) -> None:
    """Complete a recorded decision whose process was killed before its last step: the alias move (roll forward).

    Only while its audit run is still RUNNING: a finished decision is history, and `champion` may since have
    been moved on or rolled back on purpose.
    """
    client = registry.client()
    run = client.get_run(decision.audit_run_id)
    if run.info.status != "RUNNING":
        return
    if decision.promoted and _aliases(model_name).get(registry.CHAMPION, "") == decision.champion_version:
        if decision.champion_version:
            client.set_registered_model_alias(model_name, registry.PREVIOUS_CHAMPION, decision.champion_version)
        client.set_registered_model_alias(model_name, registry.CHAMPION, decision.candidate_version)
    if parent_run_id:
        client.set_tag(parent_run_id, "gate_decision", "promoted" if decision.promoted else "rejected")
        client.set_tag(parent_run_id, "gate_run_id", decision.audit_run_id)
    client.set_terminated(decision.audit_run_id, "FINISHED")


def _move_aliases(txn, model_name: str, champion_to: str, previous_to: str | None) -> None:
    client = registry.client()
    before = _aliases(model_name)

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


def _restore_matrix_hook(home: Home, text: str | None):
    def restore_accuracy_matrix(_txn):
        accuracy_matrix.restore(home, text)

    return restore_accuracy_matrix


def _extend_matrix(home: Home, model_name: str, old_champion: str, new_champion: str, event: str,
                   target_skill: str, run_id: str) -> None:
    """Start the matrix with the champion's row if it is empty, then add the new champion's row."""
    rows = accuracy_matrix.load(home)["models"].get(model_name, {}).get("rows", [])
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
    from gates import report as report_mod

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


def _publish_prefect_markdown(markdown: str, decision: Decision) -> None:
    """The report as a Prefect markdown artifact, when called inside a flow or task run."""
    from prefect.context import FlowRunContext, TaskRunContext

    if not markdown or (FlowRunContext.get() is None and TaskRunContext.get() is None):
        return
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(markdown, key="gate-report",
                                 description=f"gate: v{decision.candidate_version} "
                                             f"{'promoted' if decision.promoted else 'rejected'}")
    except Exception as exc:  # cosmetic: the decision is already recorded in MLflow
        import logging

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

def _decision_runs(model_name: str, max_results: int = 1000):
    client = registry.client()
    exp = client.get_experiment_by_name(GATE_EXPERIMENT)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.model_name = '{model_name}'",
                              order_by=["attributes.start_time DESC"], max_results=max_results)


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _decision_line(run) -> str:
    t = run.data.tags
    first = t.get("gate_reasons", "").split(" | ")[0]
    return (f"{_when(run.info.start_time)}  {t.get('event', '?'):8s} {t.get('gate_decision', '?'):9s} "
            f"v{t.get('candidate_version', '?')} vs v{t.get('champion_version') or 'none'}  "
            f"[{t.get('policy_version', '')}]  {first[:160]}")


def status_text(model_name: str = registry.STUDENT_MODEL) -> str:
    """Champion, previous champion, candidates and the last decisions."""
    client = registry.client()
    aliases = _aliases(model_name)
    if not aliases and not client.search_model_versions(f"name='{model_name}'"):
        return f"{model_name}: no registered versions. Run `continual-opd bootstrap` first."
    lines = [f"model {model_name}"]
    for alias in (registry.CHAMPION, registry.PREVIOUS_CHAMPION, registry.CANDIDATE):
        version = aliases.get(alias)
        if version is None:
            lines.append(f"  {alias:18s} -")
            continue
        tags = registry.get_version(model_name, version).tags
        lines.append(f"  {alias:18s} v{version}  method={tags.get('method', '?')} "
                     f"parent=v{tags.get('parent_version', '?')} gate={tags.get('gate_decision', 'undecided')}")
    versions = sorted(client.search_model_versions(f"name='{model_name}'"), key=lambda v: int(v.version))
    undecided = [str(v.version) for v in versions if "gate_decision" not in v.tags]
    lines.append(f"  undecided candidates: {', '.join('v' + v for v in undecided) or 'none'}")
    lines.append("versions:")
    for v in versions[-10:]:
        mark = "".join(f" @{a}" for a, n in aliases.items() if n == str(v.version))
        lines.append(f"  v{str(v.version):4s} {v.tags.get('method', '?'):22s} "
                     f"{v.tags.get('gate_decision', 'undecided'):10s}"
                     f"{mark}")
    runs = _decision_runs(model_name, 5)
    lines.append("last decisions:")
    lines += [f"  {_decision_line(r)}" for r in runs] or ["  none yet"]
    return "\n".join(lines)


def history_text(model_name: str = registry.STUDENT_MODEL, home: Home | None = None) -> str:
    """The decision log (oldest first) and the accuracy matrix with ACC and BWT."""
    home = home or current_home()
    runs = list(reversed(_decision_runs(model_name)))
    lines = [f"decision log of {model_name} (MLflow experiment {GATE_EXPERIMENT}):"]
    lines += [f"  {_decision_line(r)}" for r in runs] or ["  no decisions yet"]
    model = accuracy_matrix.load(home)["models"].get(model_name, {"accuracy": {}, "rows": []})
    lines += ["", "accuracy matrix (rows: champions in order; cells: strict accuracy %):",
              accuracy_matrix.render_markdown(model_name, model)]
    return "\n".join(lines)


def audit_record(run_id: str) -> dict:
    """The tags and decision of one audit run (for tests and tooling)."""
    import mlflow

    run = registry.client().get_run(run_id)
    out = {"tags": dict(run.data.tags), "metrics": dict(run.data.metrics), "params": dict(run.data.params),
           "status": run.info.status}
    with contextlib.suppress(Exception):
        out["decision"] = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/gate/decision.json")
    return out
