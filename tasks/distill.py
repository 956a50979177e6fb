"""Distillation stage: turn the champion into a candidate that has the batch's skill and keeps the others.

The student starts as a copy of the champion and samples its own completions (on-policy). Target-skill
prompts (the batch rows) are scored by the specialist teacher; replay prompts drawn from the train splits
of the core skills are scored by the frozen champion (the anchor), and those of the targets taught by
earlier promoted updates (`replay_taught`) by the teacher of the update that taught them (`replay_teachers`,
found through the lineage tags). The student minimises a full-vocabulary divergence to each row's own
teacher (`RoutedDistillationTrainer`), so it learns the new skill without drifting from what it already
does well. The methods, their settings and the levers live in `tasks.distill_config`, the training and the
guard in `tasks.distill_training`, the optional choice of a safe update size in `tasks.interpolation`.

Guards stop the stage before it trains on nonsense, raising `DistillationGuardError`: a teacher with
another vocabulary (every method that uses the teacher), or, for the opd methods, a teacher that does not
know the batch's answers (`guard`). Trainer checkpoints live in `home.checkpoints/distill-<key>`: rerunning
an interrupted stage with the same inputs resumes from the last one. The finished student is saved
atomically to `home.models/candidate-<key>` and registered (idempotently on the key) with alias `candidate`
and the lineage tags (`parent_version`, `teacher_model`, `teacher_version`, `data_digest`, `config_hash`,
`code_revision`, `flow_run_id`, `method`, and how it was trained: `replay_teachers`, `cold_target`,
`lora_rank`, `alpha`).
"""

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence

from continual_opd import accuracy_matrix, registry
from continual_opd.registry import RegistryError
from continual_opd.batch_io import load_batch
from continual_opd.compat import IncompatibleModels, check_distillable
from continual_opd.compute import DEFAULT_COMPUTE, ComputeConfig, training_precision
from continual_opd.home import Home, file_lock
from continual_opd.modelio import load_model, pick_device, save_model_atomic
from continual_opd.records import AcceptedBatch, Candidate, ModelRef, Teacher
from continual_opd.skills import Catalogue
from continual_opd.suites import selection_suites, suite_names
from continual_opd.tracking import MetricBuffer, code_revision, current_flow_run_id, stage_run
from continual_opd.training import compute_params
from tasks.distill_config import DistillationGuardError, DistillConfig
from tasks.distill_training import train_candidate
from tasks.interpolation import Selection, select_alpha

STAGE = "distill"
log = logging.getLogger(__name__)
REPORT_FILE = "distill_report.json"


def distill(batch: AcceptedBatch, champion: ModelRef, teacher: Teacher, cfg: DistillConfig, catalogue: Catalogue,
            home: Home, parent_run_id: str | None = None, *, callbacks: Sequence = (),
            compute: ComputeConfig = DEFAULT_COMPUTE, selection: Selection | None = None) -> Candidate:
    """Distil `teacher` (target prompts) and `champion` (replay prompts) into a copy of the champion.

    Registers the result as a new version of `cfg.registered_model` with alias `candidate`. Rerunning with
    the same inputs returns the already registered candidate, or resumes an interrupted run from its last
    checkpoint. `callbacks` are extra `transformers.TrainerCallback`s (tests use one to interrupt a run).
    `compute` says how the machine is used (precision, vLLM rollouts; `continual_opd.compute`).
    `selection` (the gate's policy as a check, and the gate's suite size) is needed when `cfg` names
    interpolation alphas other than [1.0]: the stage then registers the largest alpha that passes it on a
    selection split disjoint from the gate's suites (`tasks.interpolation`).
    """
    skill = catalogue[batch.skill]
    targets = [it for it in load_batch(batch.path) if it.skill == batch.skill]
    if not targets:
        raise ValueError(f"batch {batch.path} has no rows of skill {batch.skill!r}: nothing to distil")
    if cfg.interpolation_alphas != [1.0] and selection is None:
        raise ValueError(f"distill.interpolation_alphas={cfg.interpolation_alphas} needs the gate's policy to choose "
                         "an alpha: pass `selection` (the flow does), or set interpolation_alphas to [1.0]")
    replayed = replay_skills(cfg, catalogue, skill.id, home, champion.name)
    own = taught_teachers(home, champion.name, replayed) if cfg.replay_teachers == "own" and cfg.replay_per_step \
        else {}
    key = candidate_key(batch, champion, teacher, cfg, catalogue, replayed,
                        training_precision(compute.precision, pick_device()), own)
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
                                           parent_run_id, list(callbacks), replayed, compute, own, selection)
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
    """The registration key: same champion, teacher, data, settings, replayed skills (and their own teachers) and
    training precision (resolved: fp32 or bf16-mixed): the same candidate."""
    extra = [s for s in replayed if s not in catalogue.core]  # core-only replay keeps the keys it always had
    blob = json.dumps([champion.name, champion.version, teacher.model.name, teacher.model.version, batch.skill,
                       batch.digest, cfg.config_hash(), *([extra] if extra else []),
                       *([precision] if precision != "fp32" else []),  # fp32 (every CPU run) keeps its keys
                       *([sorted(teacher_refs(own).items())] if own else [])])
    return f"distill:{batch.skill}:{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def _train_and_register(targets, skill, batch, champion, teacher, cfg: DistillConfig, catalogue: Catalogue,
                        home: Home, key: str, parent_run_id, extra_callbacks, replayed: Sequence[str],
                        compute: ComputeConfig, own: dict, selection: Selection | None) -> object:
    import mlflow

    short = key.split(":")[-1][:16]
    work = home.checkpoints / f"distill-{short}"
    dest = home.models / f"candidate-{short}"
    lineage = {"parent_version": champion.version, "teacher_model": teacher.model.name,
               "teacher_version": teacher.model.version,
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
                                                    extra_callbacks, replayed, compute,
                                                    {s: str(registry.local_folder(v)) for s, v in own.items()})
        trained_as = {"replay_teachers": ",".join(f"{s}={ref}" for s, ref in teacher_refs(own).items()),
                      "cold_target": str(bool(metrics.get("cold_target"))).lower(), "lora_rank": str(cfg.lora_rank)}
        if cfg.interpolation_alphas != [1.0]:
            model, alpha, trials = choose_alpha(model, tokenizer, champion, targets, skill, cfg, catalogue, replayed,
                                                selection)
            metrics["alpha"] = alpha
            metrics["alpha_passed_selection"] = float(any(t["passed"] for t in trials))
            mlflow.log_dict({"trials": trials}, "alpha_selection.json")
            trained_as["alpha"] = f"{alpha:g}"
        mlflow.set_tags(trained_as)
        report = {"registration_key": key, **lineage, "skill": skill.id, "metrics": metrics}
        save_model_atomic(model, tokenizer, dest, extra_files={REPORT_FILE: json.dumps(report, indent=1)})
        version = registry.register_folder(
            dest, cfg.registered_model, run.info.run_id,
            {**lineage, **trained_as, "role": "candidate", "skill": skill.id,
             **{f"acc.{k.split('/')[1][:-4]}": f"{v:.4f}" for k, v in metrics.items()
                if k.startswith("heldout/") and k.endswith("_acc")}},
            key, description=f"{cfg.method} candidate for {skill.id} from {champion.name} v{champion.version} "
                             f"with teacher {teacher.model.name} v{teacher.model.version}.",
            example_prompts=[targets[0].prompt])
        mlflow.set_tag("candidate_version", version.version)
        logger.flush()
    shutil.rmtree(work, ignore_errors=True)
    return version


def choose_alpha(student, tokenizer, champion: ModelRef, targets, skill, cfg: DistillConfig, catalogue: Catalogue,
                 replayed: Sequence[str], selection: Selection):
    """The largest interpolation alpha whose selection-split results pass the gate's policy (`tasks.interpolation`).

    The selection split covers the gate's suites (target, core, replayed taught skills) with items outside them.
    """
    names = suite_names(catalogue, skill.id, replayed)
    suites = selection_suites(catalogue, names, cfg.selection_items, selection.gate_suite_size,
                              trained={it.prompt for it in targets})
    champion_model, _ = load_model(champion.folder, frozen=True)
    return select_alpha(student, champion_model, tokenizer, cfg.interpolation_alphas, suites, catalogue,
                        selection.accept)
