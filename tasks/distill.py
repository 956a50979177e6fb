"""Distillation stage: turn the champion into a candidate that has the batch's skill and keeps the others.

The student starts as a copy of the champion and samples its own completions (on-policy). Target-skill
prompts (the batch rows) are scored by the specialist teacher; replay prompts drawn from the train splits
of the core skills and of the targets taught by earlier promoted updates (`replay_taught`) are scored by
the frozen champion, the anchor. The student minimises the full-vocabulary reverse KL to each row's own
teacher (`RoutedDistillationTrainer`), so it learns the new skill without drifting from what it already
does well: on the demo world, a quarter of each batch as core replay kept every core skill within a point.
The methods, their settings and the guard live in `tasks.distill_config` and `tasks.distill_training`.

Guards stop the stage before it trains on nonsense, raising `DistillationGuardError`: a teacher with
another vocabulary (every method that uses the teacher), or, for the opd methods, a mean reverse KL on
target prompts at step 0 above `max_initial_kl` (a broken or mismatched teacher). Trainer checkpoints
live in `home.checkpoints/distill-<key>`: rerunning an interrupted stage with the same inputs resumes
from the last one. The finished student is saved atomically to `home.models/candidate-<key>` and
registered (idempotently on the key) with alias `candidate` and the lineage tags (`parent_version`,
`teacher_version`, `data_digest`, `config_hash`, `code_revision`, `flow_run_id`, `method`).
"""

import hashlib
import json
import shutil
from collections.abc import Sequence

from continual_opd import accuracy_matrix, registry
from continual_opd.batch_io import load_batch
from continual_opd.compat import IncompatibleModels, check_distillable
from continual_opd.compute import DEFAULT_COMPUTE, ComputeConfig, training_precision
from continual_opd.home import Home, file_lock
from continual_opd.modelio import pick_device, save_model_atomic
from continual_opd.records import AcceptedBatch, Candidate, ModelRef, Teacher
from continual_opd.skills import Catalogue
from continual_opd.tracking import MetricBuffer, code_revision, current_flow_run_id, stage_run
from continual_opd.training import compute_params
from tasks.distill_config import DistillationGuardError, DistillConfig
from tasks.distill_training import train_candidate

STAGE = "distill"
REPORT_FILE = "distill_report.json"


def distill(batch: AcceptedBatch, champion: ModelRef, teacher: Teacher, cfg: DistillConfig, catalogue: Catalogue,
            home: Home, parent_run_id: str | None = None, *, callbacks: Sequence = (),
            compute: ComputeConfig = DEFAULT_COMPUTE) -> Candidate:
    """Distil `teacher` (target prompts) and `champion` (replay prompts) into a copy of the champion.

    Registers the result as a new version of `cfg.registered_model` with alias `candidate`. Rerunning with
    the same inputs returns the already registered candidate, or resumes an interrupted run from its last
    checkpoint. `callbacks` are extra `transformers.TrainerCallback`s (tests use one to interrupt a run).
    `compute` says how the machine is used (precision, vLLM rollouts; `continual_opd.compute`).
    """
    skill = catalogue[batch.skill]
    targets = [it for it in load_batch(batch.path) if it.skill == batch.skill]
    if not targets:
        raise ValueError(f"batch {batch.path} has no rows of skill {batch.skill!r}: nothing to distil")
    replayed = replay_skills(cfg, catalogue, skill.id, home, champion.name)
    key = candidate_key(batch, champion, teacher, cfg, catalogue, replayed,
                        training_precision(compute.precision, pick_device()))
    short = key.split(":")[-1]
    with file_lock(home.locks / f"distill-{short}.lock"):  # one process trains a given candidate
        existing = registry.find_version(cfg.registered_model, key)
        if existing is None:
            if cfg.uses_teacher:
                try:
                    check_distillable(champion.folder, teacher.model.folder)
                except IncompatibleModels as exc:
                    raise DistillationGuardError(str(exc)) from exc
            existing = _train_and_register(targets, skill, batch, champion, teacher, cfg, catalogue, home, key,
                                           parent_run_id, list(callbacks), replayed, compute)
        version = str(existing.version)  # MLflow 3 gives versions as int; records carry str
        registry.client().set_registered_model_alias(cfg.registered_model, registry.CANDIDATE, version)
    folder = registry.local_folder(existing)
    report = json.loads((folder / REPORT_FILE).read_text())
    return Candidate(model=ModelRef(name=cfg.registered_model, version=version, folder=str(folder)),
                     method=cfg.method, parent_version=champion.version, teacher_version=teacher.model.version,
                     metrics=report["metrics"], run_id=existing.run_id or "")


def replay_skills(cfg: DistillConfig, catalogue: Catalogue, target: str, home: Home, model_name: str) -> list[str]:
    """Skills whose train prompts are replayed: every core skill, then (with `replay_taught`) earlier targets."""
    taught = accuracy_matrix.taught_skills(home, model_name) if cfg.replay_taught else []
    return [s for s in dict.fromkeys([*catalogue.core, *taught]) if s != target]


def candidate_key(batch: AcceptedBatch, champion: ModelRef, teacher: Teacher, cfg: DistillConfig,
                  catalogue: Catalogue, replayed: Sequence[str] = (), precision: str = "fp32") -> str:
    """The registration key: same champion, teacher, data, settings, replayed skills and training precision
    (resolved: fp32 or bf16-mixed): the same candidate."""
    extra = [s for s in replayed if s not in catalogue.core]  # core-only replay keeps the keys it always had
    blob = json.dumps([champion.name, champion.version, teacher.model.name, teacher.model.version, batch.skill,
                       batch.digest, cfg.config_hash(), *([extra] if extra else []),
                       *([precision] if precision != "fp32" else [])])  # fp32 (every CPU run) keeps its keys
    return f"distill:{batch.skill}:{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def _train_and_register(targets, skill, batch, champion, teacher, cfg: DistillConfig, catalogue: Catalogue,
                        home: Home, key: str, parent_run_id, extra_callbacks, replayed: Sequence[str],
                        compute: ComputeConfig) -> object:
    import mlflow

    short = key.split(":")[-1][:16]
    work = home.checkpoints / f"distill-{short}"
    dest = home.models / f"candidate-{short}"
    lineage = {"parent_version": champion.version, "teacher_version": teacher.model.version,
               "data_digest": batch.digest, "config_hash": cfg.config_hash(), "code_revision": code_revision(),
               "flow_run_id": current_flow_run_id(), "method": cfg.method}
    with stage_run(STAGE, parent_run_id, tags={**lineage, "skill": skill.id, "registration_key": key}) as run:
        mlflow.log_params({**{f"cfg.{k}": v for k, v in cfg.model_dump().items()}, "skill": skill.id,
                           "replayed_skills": ",".join(replayed) if cfg.replay_per_step else "",
                           "batch_rows": len(targets), "champion": f"{champion.name}/{champion.version}",
                           "teacher": f"{teacher.model.name}/{teacher.model.version}",
                           "registration_key": key, **compute_params(compute)})
        logger = MetricBuffer(run.info.run_id)
        model, tokenizer, metrics = train_candidate(targets, skill, champion, teacher, cfg, catalogue, work, logger,
                                                    extra_callbacks, replayed, compute)
        report = {"registration_key": key, **lineage, "skill": skill.id, "metrics": metrics}
        save_model_atomic(model, tokenizer, dest, extra_files={REPORT_FILE: json.dumps(report, indent=1)})
        version = registry.register_folder(
            dest, cfg.registered_model, run.info.run_id,
            {**lineage, "role": "candidate", "skill": skill.id,
             **{f"acc.{k.split('/')[1][:-4]}": f"{v:.4f}" for k, v in metrics.items()
                if k.startswith("heldout/") and k.endswith("_acc")}},
            key, description=f"{cfg.method} candidate for {skill.id} from {champion.name} v{champion.version} "
                             f"with teacher {teacher.model.name} v{teacher.model.version}.",
            example_prompts=[targets[0].prompt])
        mlflow.set_tag("candidate_version", version.version)
        logger.flush()
    shutil.rmtree(work, ignore_errors=True)
    return version
