"""One runner for the stages that train and register a model (the teacher's RL, distillation), so they cannot drift.

Each such stage does the same scaffolding around its own training: the registration key, a lock so one process
trains a given model, finding a model already registered under the key, the stage's MLflow run, training,
an atomic save, registration and the lineage tags. `run_stage` owns all of it; the stage passes its identity
and a `train` function, and gets back the registered version.

The keys and the lineage it owns:
- the **registration key** is a digest of the stage's inputs (the requested settings among them) and of the code
  that trains (`continual_opd.fingerprint.training_code`): a rerun with the same inputs and code finds the model
  instead of training it again; a fix to the trainer trains anew;
- the **lineage** records what trained: `train` must call `StageRun.trained_with` with the settings after every
  rule and the rules that fired, before it returns. They become the run's `cfg.*` params and the version's
  `config_hash` and `rules_fired` tags, beside `requested_config_hash` (the settings asked for, as in the key),
  `code_fingerprint` and `code_revision`.
"""

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from continual_opd import registry
from continual_opd.config import StrictConfig
from continual_opd.fingerprint import training_code
from continual_opd.home import Home, file_lock
from continual_opd.modelio import save_model_atomic
from continual_opd.tracking import code_revision, current_flow_run_id, stage_run


@dataclass(frozen=True)
class StageSpec:
    """What names a stage's work: its MLflow run name, its key prefix, where its models go, the code that trains."""

    stage: str  # the MLflow run name: teacher_rl, distill
    kind: str  # the registration key's prefix and the checkpoint folder's: teacher, distill
    folder_prefix: str  # the trained folder's prefix in the home's models/: teacher, candidate
    registered_model: str
    code: tuple[str, ...]  # import names of the modules that train (the code fingerprint)


@dataclass
class Trained:
    """What `train` returns: the model to save and register, with what the stage adds to its folder and tags."""

    model: object
    tokenizer: object
    tags: dict[str, str]
    report: dict  # written into the folder as `report_file`
    report_file: str
    description: str
    example_prompts: list[str]
    trust_remote_code: bool = False


@dataclass
class StageRun:
    """The open stage run that `train` works in: its MLflow run, its checkpoint folder and the lineage it records."""

    run_id: str
    work: Path
    key: str
    code: str
    requested_hash: str
    lineage: dict[str, str] = field(default_factory=dict)

    def trained_with(self, settings: StrictConfig, fired: Sequence[str]) -> None:
        """Record the settings that train, after every rule, and the rules that fired (call once, before training)."""
        import mlflow

        mlflow.log_params({f"cfg.{k}": v for k, v in settings.model_dump().items()})
        self.lineage = {"config_hash": settings.config_hash(), "requested_config_hash": self.requested_hash,
                        "rules_fired": ",".join(fired) or "none", "code_fingerprint": self.code}
        mlflow.set_tags(self.lineage)


def registration_key(spec: StageSpec, skill: str, identity: Sequence) -> str:
    """`<kind>:<skill>:<digest>` of the stage's inputs and of the code that trains."""
    blob = json.dumps([*identity, training_code(spec.code)], default=str)
    return f"{spec.kind}:{skill}:{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def work_folder(home: Home, spec: StageSpec, key: str) -> Path:
    """The stage's checkpoints for this key: a rerun with the same key resumes from them."""
    return home.checkpoints / f"{spec.kind}-{key.split(':')[-1][:16]}"


def trained_folder(home: Home, spec: StageSpec, key: str) -> Path:
    """Where the model trained under this key is saved in the home."""
    return home.models / f"{spec.folder_prefix}-{key.split(':')[-1][:16]}"


def run_stage(spec: StageSpec, skill: str, key: str, requested: StrictConfig, home: Home,
              parent_run_id: str | None, lineage: Mapping[str, str], params: Mapping[str, object],
              train: Callable[[StageRun], Trained]):
    """Find the version registered under `key`, or train and register it; returns (version, reused).

    Under the key's lock: a version already registered is returned as is. Otherwise the stage's MLflow run opens
    (tags: `lineage`, the key, the code fingerprint; params: `params`), `train` runs in it, and its model is saved
    atomically and registered with `lineage`, the lineage `train` recorded and the stage's own tags. The
    checkpoint folder is removed once the version is registered, and kept when `train` raises (a rerun resumes)."""
    import mlflow

    code = training_code(spec.code)
    with file_lock(home.locks / f"{spec.kind}-{key.split(':')[-1]}.lock"):  # one process trains a given model
        existing = registry.find_version(spec.registered_model, key)
        if existing is not None:
            return existing, True
        work = work_folder(home, spec, key)
        base = {**lineage, "code_revision": code_revision(), "flow_run_id": current_flow_run_id()}
        with stage_run(spec.stage, parent_run_id, tags={**base, "skill": skill, "registration_key": key,
                                                        "code_fingerprint": code}) as run:
            mlflow.log_params({**params, "registration_key": key})
            stage = StageRun(run.info.run_id, work, key, code, requested.config_hash())
            trained = train(stage)
            if not stage.lineage:
                raise RuntimeError(f"stage {spec.stage} trained without recording its settings "
                                   "(StageRun.trained_with): its lineage would not say what trained")
            tags = {**base, **stage.lineage, **trained.tags, "skill": skill}
            dest = trained_folder(home, spec, key)
            save_model_atomic(trained.model, trained.tokenizer, dest, extra_files={
                trained.report_file: json.dumps({"registration_key": key, **tags, **trained.report}, indent=1)})
            version = registry.register_folder(dest, spec.registered_model, run.info.run_id, tags, key,
                                               description=trained.description,
                                               example_prompts=trained.example_prompts,
                                               trust_remote_code=trained.trust_remote_code)
            mlflow.set_tag(f"{spec.folder_prefix}_version", str(version.version))
        shutil.rmtree(work, ignore_errors=True)
    return version, False
