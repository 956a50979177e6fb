"""One continual update, as a Prefect flow that reads like its DAG:

    batch ──validate──▶ AcceptedBatch ──teacher_rl──▶ Teacher ──distill──▶ Candidate ──evaluate──▶ EvalReport ──gate──▶ Decision

Each task is a thin wrapper over a plain stage function (tests call those directly). Stages pass small
records, so Prefect caches a finished stage by its inputs: a rerun after a crash skips what finished.
Retries are for transient errors only; a contract violation or a failed teacher gate is final.
The champion is read once, at the start, and passed down as a version.

Updates run one at a time (`continual_opd.locking.exclusive`): with a Prefect server, across every worker
of it, through a leased slot of the global concurrency limit `update_lock.concurrency_limit`; always,
across the processes of a home, through its file lock. Inside the lock everything that decides the update
is read from MLflow (the ledger of batches trained on, the champion, the skills taught so far), so a second
machine behaves as if it were the first. The batch may sit in a shared store (`batches`, see
`continual_opd.batch_store`); the stages read a local copy of it.

No `from __future__ import annotations` here: it breaks pydantic flow parameters under `flow.serve`.
"""

import contextlib
import hashlib
import sqlite3
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE, CacheKeyFnPolicy

from continual_opd import registry
from continual_opd.batch_store import BatchStore, exists, staged
from continual_opd.compat import check_update_models
from continual_opd.home import current_home, prepare_stores
from continual_opd.locking import exclusive
from continual_opd.records import (AcceptedBatch, Candidate, Decision, EvalReport, ModelRef, SkippedBatch, Teacher,
                                   UpdateOutcome)
from continual_opd.tracking import (UPDATES_EXPERIMENT, close_update_run, code_revision, current_flow_run_id,
                                    interrupted_update, open_update_run, set_stage)
from flows.params import UpdateParams
from continual_opd.fingerprint import training_code
from gates.promotion import decide
from tasks.distill import TRAINING_CODE as DISTILL_CODE
from tasks.distill import distill
from tasks.evaluate import evaluate
from tasks.teacher_rl import TRAINING_CODE as TEACHER_CODE
from tasks.teacher_rl import train_teacher
from tasks.validate import (ContractViolation, DuplicateBatch, contract_table, ensure_new_batch, mark_processed,
                            validate_batch)

# A finished stage is reused when its inputs and code are unchanged; the MLflow parent run is not an input.
STAGE_CACHE = (INPUTS + TASK_SOURCE) - "parent_run_id"


def trains_with(modules: tuple[str, ...]):
    """The cache policy of a stage that trains: its inputs and task source, and the code that trains
    (`continual_opd.fingerprint`): Prefect's TASK_SOURCE hashes only the task's wrapper, so a fix to the trainer
    would otherwise return the cached record of the old candidate."""
    return (INPUTS + TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=lambda context, inputs: training_code(modules))) \
        - "parent_run_id"
TRANSIENT = (ConnectionError, TimeoutError, sqlite3.OperationalError, BlockingIOError)


def is_transient(task, task_run, state) -> bool:
    """Retry only errors that a second try can fix: network blips, a locked SQLite database."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception as exc:  # noqa: BLE001 - classify by message: SQLAlchemy wraps sqlite's lock error
        return "database is locked" in str(exc)
    return False


stage = dict(cache_policy=STAGE_CACHE, persist_result=True, retries=2, retry_delay_seconds=2,
             retry_condition_fn=is_transient)


@task(name="validate", **stage)
def validate_task(batch_path: str, batch_sha256: str, params: UpdateParams, tokenizer_folder: str,
                  parent_run_id: str) -> AcceptedBatch:
    home = current_home()
    try:
        return validate_batch(batch_path, params.contract, params.catalogue(), params.evaluation.suite_size,
                              tokenizer_folder, home, parent_run_id, move=False,
                              store=BatchStore.at(params.batches, home))
    except ContractViolation as exc:
        create_table_artifact(contract_table(exc.report), key="data-contract",
                              description=f"Data contract failures for {Path(batch_path).name}")
        raise


@task(name="teacher-rl", **{**stage, "cache_policy": trains_with(TEACHER_CODE)})
def teacher_rl_task(batch: AcceptedBatch, champion: ModelRef, params: UpdateParams, parent_run_id: str) -> Teacher:
    return train_teacher(batch, champion, params.teacher, params.catalogue(), current_home(), parent_run_id,
                         compute=params.compute)


@task(name="distill", **{**stage, "cache_policy": trains_with(DISTILL_CODE)})
def distill_task(batch: AcceptedBatch, champion: ModelRef, teacher: Teacher, params: UpdateParams,
                 parent_run_id: str) -> Candidate:
    return distill(batch, champion, teacher, params.distill, params.catalogue(), current_home(), parent_run_id,
                   compute=params.compute)


@task(name="evaluate", **stage)
def evaluate_task(champion: ModelRef, candidate: Candidate, skill: str, params: UpdateParams,
                  parent_run_id: str) -> EvalReport:
    return evaluate(champion, candidate, skill, params.evaluation, params.catalogue(), current_home(), parent_run_id,
                    compute=params.compute)


@task(name="gate", **stage)
def gate_task(report: EvalReport, candidate: Candidate, champion: ModelRef, params: UpdateParams,
              parent_run_id: str) -> Decision:
    return decide(report, candidate, champion, params.gate, params.catalogue(), current_home(), parent_run_id)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def read_champion(model_name: str, version: str | None = None) -> ModelRef:
    """`model_name@champion`, or the given version (the champion of an interrupted attempt at this update)."""
    found = registry.get_version(model_name, version) if version else registry.version_by_alias(model_name,
                                                                                                  registry.CHAMPION)
    return ModelRef(name=model_name, version=str(found.version), folder=str(registry.local_folder(found)))


def _on_failure(flow, flow_run, state):
    """Record a failed update, and the stage it failed in, on the update's MLflow run."""
    close_update_run(str(flow_run.id), state)


@flow(name="continual-update", on_failure=[_on_failure], on_crashed=[_on_failure])
def continual_update(params: UpdateParams) -> UpdateOutcome | SkippedBatch:
    """Validate a batch, train a teacher, distil a candidate, evaluate it against the champion, gate it."""
    logger = get_run_logger()
    home = prepare_stores(current_home())
    store = BatchStore.at(params.batches, home)
    lock = params.update_lock

    def waiting(what: str) -> None:
        logger.warning(f"another continual update is running; waiting for it to finish (it holds {what})")

    with (exclusive(home, "update", limit=lock.concurrency_limit, timeout_s=lock.timeout_s, lease_s=lock.lease_s,
                    on_wait=waiting, holder_flow_run=current_flow_run_id(), stop_if_lease_lost=False),
          contextlib.ExitStack() as stack):
        if store.in_inbox(params.batch) and not exists(params.batch):  # a shared inbox: another worker took it
            reason = (f"batch file {params.batch} is no longer in the inbox: another update took it while this one "
                      f"waited (see {store.processed}, {store.quarantine} and the MLflow experiment batch-ledger)")
            logger.info(reason)
            return SkippedBatch(path=params.batch, digest="", reason=reason)
        local = stack.enter_context(staged(params.batch, home))
        try:  # outside the task cache: a cached AcceptedBatch must never hide a re-sent copy
            ensure_new_batch(params.batch, home, store)
        except DuplicateBatch as dup:
            logger.info(str(dup))
            return SkippedBatch(path=params.batch, digest=dup.digest, reason=str(dup))
        resumed = interrupted_update(params)  # a killed attempt at this batch: keep its champion (see there)
        champion = read_champion(params.student_model, resumed)
        if resumed:
            logger.warning(f"an earlier attempt at this batch was killed; resuming it against its champion v{resumed}")
        check_update_models(champion.folder, params.teacher.init, params.catalogue().values(),
                            params.teacher.trust_remote_code)
        run_id, ui_link = open_update_run(params, champion)
        create_link_artifact(ui_link, link_text="MLflow run of this update", key="mlflow-run",
                             description=f"MLflow run {run_id} (experiment {UPDATES_EXPERIMENT})")
        logger.info(f"champion is {champion.name} v{champion.version}; MLflow run {run_id}")

        set_stage(run_id, "validate")
        batch = validate_task(params.batch, _file_sha256(local), params, champion.folder, run_id)
        set_stage(run_id, "teacher_rl")
        teacher = teacher_rl_task(batch, champion, params, run_id)
        set_stage(run_id, "distill")
        candidate = distill_task(batch, champion, teacher, params, run_id)
        set_stage(run_id, "evaluate")
        report = evaluate_task(champion, candidate, batch.skill, params, run_id)
        set_stage(run_id, "gate")
        decision = gate_task(report, candidate, champion, params, run_id)

        batch = mark_processed(params.batch, batch, home, store)
        create_markdown_artifact(summary_markdown(champion, candidate, report, decision), key="update-summary")
        close_update_run(run_id, None, decision=decision)
    return UpdateOutcome(batch=batch, teacher=teacher, candidate=candidate, report=report, decision=decision,
                         mlflow_run_id=run_id)


def summary_markdown(champion: ModelRef, candidate: Candidate, report: EvalReport, decision: Decision) -> str:
    verdict = "PROMOTED" if decision.promoted else "REJECTED"
    lines = [f"# Continual update: {verdict}", "",
             f"champion v{champion.version} vs candidate v{candidate.model.version} ({candidate.method}), "
             f"code {code_revision()}", "",
             "| suite | champion | candidate | delta | 95% CI | McNemar p |", "|---|---|---|---|---|---|"]
    for name, s in report.suites.items():
        lines.append(f"| {name} | {s.champion_acc:.3f} | {s.candidate_acc:.3f} | {s.delta:+.3f} | "
                     f"[{s.delta_ci_low:+.3f}, {s.delta_ci_high:+.3f}] | {s.mcnemar_p:.3g} |")
    lines += ["", f"drift/kl_core = {report.kl_core:.4f}", "", "## Reasons", *[f"- {r}" for r in decision.reasons]]
    return "\n".join(lines)
