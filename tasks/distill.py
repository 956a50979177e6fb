"""Distillation stage: turn the champion into a candidate that has the batch's skill and keeps the others.

The student starts as a copy of the champion and samples its own completions (on-policy). Target-skill
prompts (the batch rows) are scored by the specialist teacher; replay prompts drawn from the train splits
of the core skills are scored by the frozen champion (the anchor), and those of the targets taught by
earlier promoted updates (`taught_replay_weight`) by the teacher of the update that taught them (`replay_teachers`,
found through the lineage tags). The student minimises a full-vocabulary divergence to each row's own
teacher (`RoutedDistillationTrainer`), so it learns the new skill without drifting from what it already
does well. The methods, their settings and the levers live in `tasks.distill_config`, the training, the
cold-target rule and the guard in `tasks.distill_training`.

Guards stop the stage before it trains on nonsense, raising `DistillationGuardError`: a teacher with
another vocabulary (every method that uses the teacher), or, for the opd methods, a teacher that does not
know the batch's answers (`guard`). The scaffolding is `continual_opd.stage_runner`'s, shared with the teacher
stage: trainer checkpoints live in `home.checkpoints/distill-<key>`, and rerunning an interrupted stage with the
same inputs and code resumes from the last one. The finished student is saved atomically to
`home.models/candidate-<key>` and registered (idempotently on the key) with alias `candidate` and the lineage
tags (`parent_version`, `teacher_model`, `teacher_version`, `data_digest`, `config_hash` and `rules_fired`: what
trained, after the cold-target rule; `requested_config_hash`, `code_fingerprint`, `code_revision`,
`flow_run_id`, `method`, and how it was trained: `replay_teachers`, `cold_target`, `lora_rank`).
"""

import json
import logging
from collections.abc import Sequence

from continual_opd import accuracy_matrix, registry
from continual_opd.batch_io import load_batch
from continual_opd.compat import IncompatibleModels, check_distillable
from continual_opd.compute import DEFAULT_COMPUTE, ComputeConfig, training_precision
from continual_opd.home import Home
from continual_opd.modelio import pick_device
from continual_opd.records import AcceptedBatch, Candidate, ModelRef, Teacher
from continual_opd.registry import RegistryError
from continual_opd.skills import Catalogue
from continual_opd.stage_runner import StageRun, StageSpec, Trained, registration_key, run_stage
from continual_opd.tracking import MetricBuffer
from continual_opd.training import compute_params
from tasks.distill_config import DistillationGuardError, DistillConfig
from tasks.distill_training import train_candidate

STAGE = "distill"
log = logging.getLogger(__name__)
REPORT_FILE = "distill_report.json"
# the modules whose code trains a candidate: a change to any of them trains anew (continual_opd.fingerprint)
TRAINING_CODE = ("tasks.distill", "tasks.distill_config", "tasks.distill_training", "tasks.routed_distillation",
                 "tasks.rewards", "continual_opd.training", "continual_opd.decoding", "continual_opd.prompts",
                 "continual_opd.supervised", "continual_opd.modelio", "continual_opd.suites", "continual_opd.rules",
                 "continual_opd.stage_runner")


def spec(cfg: DistillConfig) -> StageSpec:
    return StageSpec(stage=STAGE, kind="distill", folder_prefix="candidate", registered_model=cfg.registered_model,
                     code=TRAINING_CODE)


def distill(batch: AcceptedBatch, champion: ModelRef, teacher: Teacher, cfg: DistillConfig, catalogue: Catalogue,
            home: Home, parent_run_id: str | None = None, *, callbacks: Sequence = (),
            compute: ComputeConfig = DEFAULT_COMPUTE) -> Candidate:
    """Distil `teacher` (target prompts) and `champion` (replay prompts) into a copy of the champion.

    Registers the result as a new version of `cfg.registered_model` with alias `candidate`. Rerunning with
    the same inputs and code returns the already registered candidate, or resumes an interrupted run from its
    last checkpoint. `callbacks` are extra `transformers.TrainerCallback`s (tests use one to interrupt a run).
    `compute` says how the machine is used (precision, vLLM rollouts; `continual_opd.compute`).
    """
    skill = catalogue[batch.skill]
    targets = [it for it in load_batch(batch.path) if it.skill == batch.skill]
    if not targets:
        raise ValueError(f"batch {batch.path} has no rows of skill {batch.skill!r}: nothing to distil")
    replayed = replay_skills(cfg, catalogue, skill.id, home, champion.name)
    own = taught_teachers(home, champion.name, replayed) if cfg.replay_teachers == "own" and cfg.replay_per_step \
        else {}
    key = candidate_key(batch, champion, teacher, cfg, catalogue, replayed,
                        training_precision(compute.precision, pick_device()), own)
    lineage = {"parent_version": champion.version, "teacher_model": teacher.model.name,
               "teacher_version": teacher.model.version, "data_digest": batch.digest, "method": cfg.method,
               "role": "candidate", "replay_teachers": ",".join(f"{s}={ref}" for s, ref in teacher_refs(own).items()),
               "lora_rank": str(cfg.lora_rank)}
    params = {"skill": skill.id, "replayed_skills": ",".join(replayed) if cfg.replay_per_step else "",
              "batch_rows": len(targets), "champion": f"{champion.name}/{champion.version}",
              "teacher": f"{teacher.model.name}/{teacher.model.version}", **compute_params(compute)}

    if cfg.uses_teacher:
        try:
            check_distillable(champion.folder, teacher.model.folder)
        except IncompatibleModels as exc:
            raise DistillationGuardError(str(exc)) from exc

    def train(stage: StageRun) -> Trained:
        logger = MetricBuffer(stage.run_id)
        model, tokenizer, metrics, trained_cfg, fired = train_candidate(
            targets, skill, champion, teacher, cfg, catalogue, stage.work, logger, list(callbacks), replayed, compute,
            {s: str(registry.local_folder(v)) for s, v in own.items()}, on_rules=stage.trained_with)
        logger.flush()
        return Trained(
            model, tokenizer, report_file=REPORT_FILE, report={"metrics": metrics},
            tags={"cold_target": str("cold_target" in fired).lower(),
                  **{f"acc.{k.split('/')[1][:-4]}": f"{v:.4f}" for k, v in metrics.items()
                     if k.startswith("heldout/") and k.endswith("_acc")}},
            description=f"{cfg.method} candidate for {skill.id} from {champion.name} v{champion.version} with "
                        f"teacher {teacher.model.name} v{teacher.model.version}.",
            example_prompts=[targets[0].prompt])

    version, _ = run_stage(spec(cfg), skill.id, key, cfg, home, parent_run_id, lineage, params, train)
    version_id = str(version.version)  # MLflow 3 gives versions as int; records carry str
    registry.client().set_registered_model_alias(cfg.registered_model, registry.CANDIDATE, version_id)
    folder = registry.local_folder(version)
    report = json.loads((folder / REPORT_FILE).read_text())
    return Candidate(model=ModelRef(name=cfg.registered_model, version=version_id, folder=str(folder)),
                     method=cfg.method, parent_version=champion.version, teacher_version=teacher.model.version,
                     metrics=report["metrics"], run_id=version.run_id or "")


def replay_skills(cfg: DistillConfig, catalogue: Catalogue, target: str, home: Home, model_name: str) -> list[str]:
    """Skills whose train prompts are replayed: every core skill, then (with taught replay on) earlier targets."""
    taught = accuracy_matrix.taught_skills(home, model_name) if cfg.taught_replay_weight > 0 else []
    return [s for s in dict.fromkeys([*catalogue.core, *taught]) if s != target]


def taught_teachers(home: Home, model_name: str, replayed: Sequence[str]) -> dict:
    """Replayed skill -> the registered teacher version (MLflow) of the latest promoted update that taught it.

    Lineage: the accuracy matrix's promoted rows -> the candidate version's `teacher_model`/`teacher_version`
    tags (versions registered before `teacher_model` existed used the default teacher model). A skill whose
    teacher the registry no longer has (deleted, or trained outside the flow) is replayed against the champion,
    with a warning: an update must not fail because an earlier teacher is gone.
    """
    out: dict = {}
    for row in accuracy_matrix.load(home, model_name)["rows"]:
        if row["event"] != "promoted" or row["target_skill"] not in replayed:
            continue
        try:
            tags = registry.get_version(model_name, row["version"]).tags
            if not tags.get("teacher_version"):
                continue
            out[row["target_skill"]] = registry.get_version(tags.get("teacher_model", registry.TEACHER_MODEL),
                                                            tags["teacher_version"])
        except RegistryError as exc:
            log.warning(f"replaying {row['target_skill']} against the champion, not its own teacher: {exc}")
            out.pop(row["target_skill"], None)
    return out


def teacher_refs(own: dict) -> dict[str, str]:
    """Skill -> `model/version` of each teacher found by `taught_teachers` (the key and the lineage tag)."""
    return {skill: f"{version.name}/{version.version}" for skill, version in own.items()}


def candidate_key(batch: AcceptedBatch, champion: ModelRef, teacher: Teacher, cfg: DistillConfig,
                  catalogue: Catalogue, replayed: Sequence[str] = (), precision: str = "fp32",
                  own: dict | None = None) -> str:
    """The registration key: same champion, teacher, data, settings, replayed skills (and their own teachers),
    training precision (resolved: fp32 or bf16-mixed) and training code: the same candidate."""
    extra = [s for s in replayed if s not in catalogue.core]
    return registration_key(spec(cfg), batch.skill, [
        champion.name, champion.version, teacher.model.name, teacher.model.version, batch.skill, batch.digest,
        cfg.config_hash(), extra, precision, sorted(teacher_refs(own or {}).items())])
