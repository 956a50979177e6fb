"""The stages' settings stay few and each says what it does: the run form a user fills in stays readable.

A setting stays only if it is a budget or I/O choice a user must make, or a lever measured to matter; the rest live
in bench/ as variants or go. This counts what a user can set in the teacher and distillation sections, a rule's
own fields included, and checks every one has a description.
"""

from pydantic import BaseModel

from tasks.distill_config import DistillConfig
from tasks.teacher_rl import TeacherConfig

MOST_SETTINGS = 40


def _leaves(model: type[BaseModel], prefix: str) -> dict[str, str]:
    out = {}
    for name, field in model.model_fields.items():
        out[f"{prefix}.{name}"] = field.description or ""
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out.update(_leaves(field.annotation, f"{prefix}.{name}"))
    return out


def test_the_teacher_and_distillation_sections_hold_at_most_40_documented_settings():
    fields = {**_leaves(TeacherConfig, "teacher"), **_leaves(DistillConfig, "distill")}
    leaves = {k: v for k, v in fields.items() if not any(other.startswith(k + ".") for other in fields)}
    assert len(leaves) <= MOST_SETTINGS, f"{len(leaves)} settings: {sorted(leaves)}"
    assert {"teacher.warm_start.below", "distill.cold_target.settings"} <= set(leaves), "rules count their fields"
    undocumented = [k for k, v in fields.items() if len(v) < 15]
    assert not undocumented, f"settings without a description of what they do: {undocumented}"
