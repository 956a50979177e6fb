"""The one parameter model of a continual update: what the Prefect UI shows as the run form.

Strict, frozen and closed (`extra="forbid"`): a typo in a YAML config or a `--set` override is an error
that names the field, never a silently ignored setting. Each stage owns its section.
"""

import re
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from continual_opd.batch_store import BatchStoreError, check_location
from continual_opd.compute import ComputeConfig
from continual_opd.config import StrictConfig
from continual_opd.registry import STUDENT_MODEL
from continual_opd.skill_files import load_catalogue
from continual_opd.skills import Catalogue
from demo_world.skills import CATALOGUE as DEMO_CATALOGUE
from gates.promotion import GateConfig
from tasks.distill_config import DistillConfig
from tasks.evaluate import EvalConfig
from tasks.teacher_rl import TeacherConfig
from tasks.validate import ContractConfig


class UpdateLockConfig(StrictConfig):
    """How updates are kept apart: one at a time per home always, and across machines with a Prefect server."""

    concurrency_limit: str = Field("continual-opd-update", description=(
        "Prefect global concurrency limit (1 slot) an update holds while it runs, when a Prefect server is "
        "configured, so updates on every worker run one at a time; empty to rely on the home's file lock only."))
    timeout_s: float = Field(6 * 3600.0, gt=0, description="Seconds to wait for a running update to finish.")
    lease_s: float = Field(120.0, ge=60, description=(
        "Lease of the slot in seconds (Prefect grants 60 or more): renewed while the update runs; if its worker "
        "dies, the slot is freed this long after (plus up to 15 s)."))


class UpdateSettings(StrictConfig):
    """Everything about an update except which batch it learns from (shared by the manual and nightly flows)."""

    student_model: str = Field(STUDENT_MODEL, description="Registered model whose @champion is updated.")
    skills: list[str] = Field(default_factory=list, description="Skill YAML files (see continual_opd/skill_files.py); "
                              "empty = the demo world's skills.")
    contract: ContractConfig = Field(default_factory=ContractConfig, description="Data contract settings.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Teacher RL (GRPO) settings.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="On-policy distillation settings.")
    evaluation: EvalConfig = Field(default_factory=EvalConfig, description="Forgetting-suite settings.")
    gate: GateConfig = Field(default_factory=GateConfig, description="Promotion gate settings.")
    compute: ComputeConfig = Field(default_factory=ComputeConfig, description="How every stage uses the machine: "
                                                                              "precision and vLLM rollouts.")
    batches: str = Field("", description=(
        "Where batches wait (inbox/) and go (processed/, quarantine/): empty = the home; or a folder or fsspec "
        "URL shared by every worker, e.g. s3://bucket/continual-opd (credentials from the environment)."))
    update_lock: UpdateLockConfig = Field(default_factory=UpdateLockConfig, description=(
        "How concurrent updates wait for each other."))

    @model_validator(mode="after")
    def _skill_files_load(self):
        self.catalogue()  # a wrong skill file fails here, naming its file and field, not inside a stage
        return self

    @field_validator("batches")
    @classmethod
    def _batches_open(cls, location: str) -> str:
        try:
            return check_location(location)  # a missing driver (s3fs) fails here, not after the update started
        except BatchStoreError as exc:
            raise ValueError(str(exc)) from None

    def catalogue(self) -> Catalogue:
        """The skills of this update: those the skill files declare, or the demo world's (cached per file state)."""
        return load_catalogue(self.skills) if self.skills else DEMO_CATALOGUE


class UpdateParams(UpdateSettings):
    """The parameters of one continual update."""

    batch: str = Field(description="Batch file to learn from (a path or an fsspec URL): JSONL or parquet rows id, "
                                   "skill, prompt, answer.")


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string, and strict settings then refuse it;
    YAML 1.2, and every user, read it as the number it is."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class ParamsError(ValueError):
    """A config file or override that does not fit `UpdateParams`; the message names the field."""


def _set_dotted(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ParamsError(f"--set {dotted}: {key!r} is not a section")
    node[keys[-1]] = value


def load_params(batch: str | None = None, config: str | Path | None = None, overrides: list[str] = ()) -> UpdateParams:
    """Build the parameters from an optional YAML file, `--set key=value` overrides and the batch path."""
    tree: dict = {}
    if config:
        path = Path(config)
        try:
            loaded = _yaml(path.read_text()) or {}
        except OSError as exc:
            raise ParamsError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ParamsError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ParamsError(f"config file {path} must hold a mapping of settings, not {type(loaded).__name__}")
        tree = loaded
    for item in overrides:
        if "=" not in item:
            raise ParamsError(f"--set {item!r}: use dotted.key=value, e.g. --set teacher.steps=200")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), _yaml(raw) if raw.strip() else "")
    if batch is not None:
        tree["batch"] = str(batch)
    if isinstance(tree.get("contract"), dict) and "suite_size" in tree["contract"]:
        raise ParamsError("contract.suite_size is no longer a setting: the contamination check covers the gate's own "
                          "suites, whose size is evaluation.suite_size; set only that one")
    try:
        return UpdateParams.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            + (f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], dict) else "")
            for err in exc.errors()
        )
        raise ParamsError(f"invalid settings: {problems}") from None
