"""The gate: apply the policy to an evaluation, then promote (move `champion`) or reject; and rollback.

- Decisions and rollbacks of a model happen one at a time (`gates.locking`). Inside the lock the
  champion is read again; if it is no longer the version the candidate was evaluated against, the
  candidate is rejected ("champion moved ... rerun against the new champion"), so two updates started
  from the same champion can never both be promoted.
- Deciding is idempotent per candidate version: a candidate with a recorded decision gets it back, and a
  decision whose process was killed before its alias move is completed (rolled forward).
- Every decision and rollback is recorded, with its registry moves, by `gates.audit`.
"""

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, model_validator

from continual_opd import accuracy_matrix, registry
from continual_opd.config import StrictConfig
from continual_opd.home import Home, current_home, prepare_stores
from continual_opd.records import Candidate, Decision, EvalReport, ModelRef
from continual_opd.skills import Catalogue
from gates.audit import (BLESSED, close_interrupted, finish_interrupted, publish_prefect_markdown, record_decision,
                         recorded_decision)
from gates.locking import gate_lock
from gates.policy import DEFAULT_POLICY, Verdict, evaluate_policy, load_policy


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


def policy_check(cfg: GateConfig, catalogue: Catalogue, target: str, home: Home, model_name: str):
    """The gate's policy as a check on metrics measured elsewhere (distillation's selection split): the same
    thresholds as `decide`, nothing recorded. Returns metrics -> (passes, reasons)."""
    policy = load_policy(cfg.policy_path()).policy
    core = [c for c in catalogue.core if c != target]
    taught = [t for t in accuracy_matrix.taught_skills(home, model_name) if t != target]

    def check(metrics: Mapping[str, float]) -> tuple[bool, tuple[str, ...]]:
        verdict = evaluate_policy(policy, dict(metrics), target, core, taught)
        return verdict.blessed, verdict.reasons

    return check


class RollbackRefused(ValueError):
    """The rollback was refused; the message says why and what to do."""


def decide(report: EvalReport, candidate: Candidate, champion: ModelRef | None, cfg: GateConfig,
           catalogue: Catalogue, home: Home, parent_run_id: str | None = None) -> Decision:
    """Apply the policy to the report, record the decision, and promote or reject the candidate.

    Idempotent per candidate version: deciding a candidate that already has a recorded decision returns it.
    """
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
    core = [c for c in catalogue.core if c != target]

    with gate_lock(home, cfg.concurrency_limit, cfg.lock_timeout_s):
        earlier = recorded_decision(model_name, candidate.model.version)
        close_interrupted(model_name, candidate.model.version, keep=earlier.audit_run_id if earlier else "")
        if earlier is not None:
            finish_interrupted(model_name, earlier, parent_run_id)
            return earlier
        current = registry.aliases(model_name).get(registry.CHAMPION, "")
        taught = [t for t in accuracy_matrix.taught_skills(home, model_name) if t != target]
        if current != expected:
            verdict = Verdict(False, (f"champion moved from v{expected or 'none'} to v{current or 'none'} during the "
                                      "update; rerun against the new champion",), ())
        else:
            verdict = evaluate_policy(policy.policy, report.metrics(), target, core, taught,
                                      has_champion=bool(expected))
        decision, markdown = record_decision(
            event="gate", promote=verdict.blessed, model_name=model_name, new_champion=candidate.model.version,
            old_champion=current, compared_with=expected, verdict=verdict, policy=policy, report=report,
            home=home, parent_run_id=parent_run_id,
            extra_tags={"target_skill": target, "method": candidate.method,
                        "parent_version": candidate.parent_version, "teacher_version": candidate.teacher_version,
                        "eval_run_id": report.run_id, "candidate_run_id": candidate.run_id})
    publish_prefect_markdown(markdown, decision)
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
    with gate_lock(home, cfg.concurrency_limit, cfg.lock_timeout_s):
        try:
            target = registry.get_version(model_name, to_version)
        except registry.RegistryError:
            raise RollbackRefused(f"{model_name} has no version {to_version}; `continual-opd status` lists the "
                                  "versions") from None
        current = registry.aliases(model_name).get(registry.CHAMPION, "")
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
        decision, _ = record_decision(event="rollback", promote=True, model_name=model_name, new_champion=to_version,
                              old_champion=current, compared_with=current, verdict=verdict, policy=None,
                              report=None, home=home, parent_run_id=None, reasons_override=(note,),
                              extra_tags={"rollback_reason": reason.strip(), "forced": str(not blessed).lower()})
    return decision
