"""The MLflow model registry as continual-opd uses it: versions with lineage tags, aliases, idempotent registration.

A registered version points at its weights twice: the MLflow Model it was logged as (`source`: a pyfunc that
completes prompts, servable with `mlflow models serve`, portable to any tracking server; `served_model`) and
the tag `model_folder` (the local folder in the home, loaded directly when it exists, so nothing is copied on
a laptop). Registration is idempotent on a `registration_key` tag, so a rerun after a crash never creates a
second version for the same work.
"""

import os
from pathlib import Path

from continual_opd.home import current_home, prepare_stores
from continual_opd.served_model import DEFAULT_EXAMPLE, hf_folder, log_served_model

STUDENT_MODEL = "continual-opd-student"
TEACHER_MODEL = "continual-opd-teacher"
CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"
CANDIDATE = "candidate"
LINEAGE_TAGS = ("parent_version", "teacher_version", "data_digest", "config_hash", "code_revision",
                "flow_run_id", "method")


class RegistryError(LookupError):
    """The registry lacks what was asked for."""


def client():
    import mlflow
    from mlflow import MlflowClient

    home = prepare_stores(current_home())
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", home.tracking_uri))
    return MlflowClient()


def experiment_id(name: str) -> str:
    """Get or create an experiment whose artifacts live in the home (not ./mlruns of the cwd)."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        location = None
        if c.tracking_uri.startswith("sqlite:"):
            location = (current_home().artifacts / name).as_uri()
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it first
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_version(name: str, registration_key: str):
    """The version already registered for this piece of work, if any."""
    c = client()
    try:
        versions = c.search_model_versions(f"name='{name}' and tags.registration_key='{registration_key}'")
    except Exception:
        versions = [v for v in c.search_model_versions(f"name='{name}'")
                    if v.tags.get("registration_key") == registration_key]
    return min(versions, key=lambda v: int(v.version)) if versions else None


def register_folder(folder: str | Path, name: str, run_id: str, tags: dict[str, str], registration_key: str,
                    description: str = "", example_prompts=DEFAULT_EXAMPLE, trust_remote_code: bool = False):
    """Log a finished model folder to `run_id` as an MLflow Model and register it as a new version of `name`
    (idempotent). `example_prompts` become the model's input example (a prompt of the version's skill)."""
    from mlflow.exceptions import MlflowException

    c = client()
    existing = find_version(name, registration_key)
    if existing is not None:
        return existing
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise RegistryError(f"refusing to register {folder}: it is not a complete model folder")
    logged = log_served_model(folder, run_id, example_prompts, trust_remote_code)
    try:
        c.create_registered_model(name)
    except MlflowException:
        pass  # already exists
    all_tags = {**{k: str(v) for k, v in tags.items()}, "registration_key": registration_key,
                "model_folder": str(folder.resolve())}
    return c.create_model_version(name, logged.model_uri, run_id=run_id, tags=all_tags, description=description,
                                  model_id=logged.model_id)


def version_by_alias(name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise RegistryError(
            f"registered model {name!r} has no version with alias {alias!r}. Run `continual-opd bootstrap` "
            "(demo world) or register a champion first."
        ) from exc


def get_version(name: str, version: str | int):
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"registered model {name!r} has no version {version}") from exc


def local_folder(version) -> Path:
    """Where this version's Hugging Face folder is on this machine, downloading the MLflow copy if needed."""
    folder = Path(version.tags.get("model_folder", ""))
    if version.tags.get("model_folder") and (folder / "config.json").is_file():
        return folder
    import mlflow

    return hf_folder(mlflow.artifacts.download_artifacts(artifact_uri=version.source))


def aliases(name: str) -> dict[str, str]:
    """alias -> version (as a string, like every version in continual-opd; MLflow 3 returns ints) for a model."""
    from mlflow.exceptions import MlflowException

    try:
        model = client().get_registered_model(name)
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in model.aliases.items()}
