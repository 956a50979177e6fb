"""Adopt a user's local Hugging Face model folder as the first champion of a registered model.

The demo world's `bootstrap` pretrains its own base; a real user already has one (e.g. a 0.5B instruct model).
This checks the folder (safetensors, no unapproved remote code, a loadable tokenizer), copies it into the home
(atomically: the registry never points at a half-copied folder) and registers it as `<name>@champion` when the
model has no champion yet. The command line is `continual-opd adopt FOLDER --name NAME`.
"""

from pathlib import Path

from continual_opd import registry
from continual_opd.home import Home, current_home, file_lock, prepare_stores
from continual_opd.modelio import copy_model_folder_atomic, load_tokenizer, weights_digest
from continual_opd.records import ModelRef

ADOPT_EXPERIMENT = "adopted-models"


def adopt_model(folder: str | Path, model_name: str, home: Home | None = None, trust_remote_code: bool = False,
                make_champion: bool = True) -> ModelRef:
    """Register `folder` as a version of `model_name` (idempotent on its weights); champion if it has none."""
    import mlflow

    home = prepare_stores(home or current_home())
    folder = Path(folder).resolve()
    load_tokenizer(folder, trust_remote_code)  # checks the folder too: a clear error before anything is copied
    digest = weights_digest(folder)
    key = f"adopt:{digest}"
    with file_lock(home.locks / "bootstrap.lock"):
        dest = home.models / f"adopted-{folder.name}-{digest[:8]}"
        if not (dest / "config.json").is_file():
            copy_model_folder_atomic(folder, dest)
        with mlflow.start_run(experiment_id=registry.experiment_id(ADOPT_EXPERIMENT),
                              run_name=f"adopt-{folder.name}") as run:
            version = registry.register_folder(
                dest, model_name, run.info.run_id,
                {"role": "base", "made_by": f"continual-opd adopt from {folder}", "parent_version": "none",
                 "method": "adopted", "gate_decision": "adopted"}, key,
                description=f"Adopted from the local folder {folder}.", trust_remote_code=trust_remote_code)
        if make_champion and registry.CHAMPION not in registry.aliases(model_name):
            registry.client().set_registered_model_alias(model_name, registry.CHAMPION, version.version)
    return ModelRef(name=model_name, version=str(version.version), folder=str(registry.local_folder(version)))
