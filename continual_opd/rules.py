"""Rules: settings a stage changes for one update when a measurement says its ordinary recipe does not fit.

A rule is named, and has three parts: its condition (the initial model's accuracy on the rule's measurement items is
below `below`), its measurement items (`measure`: the target's selection items, `continual_opd.suites`, and the
batch's own prompts with their reference answers; never the gate's items), and the settings it sets when it fires.
Each stage measures once and applies its rules in one place (`fire`); it logs the measurement, how many items it
read, the rules that fired, and the settings that trained after every rule, so the lineage shows what trained. The
rules of the demo world:
- the teacher's `warm_start`: a skill the initial model cannot do gives GRPO no reward to learn from, so the
  teacher is first trained by supervised steps (`tasks.teacher_warm_start`) with the rule's settings;
- distillation's `cold_target`: a target the champion cannot do at all trains longer, with more replay and with
  weight decay (`tasks.distill_training`).

Why the batch's prompts count too: a small skill's selection part is too small to measure a bound of a few percent
(the demo's `mul`: 45 items, of which a champion that answers none of the gate part's 147 answered 1 or 2 by chance,
4.4% against a 5% bound). The update has not trained on its batch yet, so the initial model's accuracy on the batch's
prompts is an estimate of its skill as fair as the held-out split's, and it reads no gate item. The demo's batches
add 528 (`mul`) to 2,048 prompts, which puts the standard error of a 4% accuracy under 1 point. Both rules fire below
5%, the bound the recipe had before the rules moved off the gate's items (docs/benchmark.md, "The rules").
"""

from collections.abc import Mapping

from pydantic import Field

from continual_opd.config import StrictConfig
from continual_opd.decoding import skill_accuracy


class Rule(StrictConfig):
    """One named rule of a stage: when it fires, and what it sets."""

    # defaults, so that a rule given in part passes the Prefect server's schema check; the stage fills the rest in
    below: float = Field(0.0, ge=0, le=1, description="Fires when the initial model's accuracy on the target's "
                                                      "selection items and the batch's prompts is below this (0 = "
                                                      "never).")
    settings: dict[str, int | float] = Field(default_factory=dict, description="What the rule sets when it fires "
                                                                               "(setting -> value).")

    def fires(self, accuracy: float) -> bool:
        return accuracy < self.below


def merged_with(default: Rule, given):
    """A rule given in part (a YAML section or `--set distill.cold_target.settings.steps=6`) keeps the rest of
    `default`: its `below`, and its other settings. A `Rule` or anything else is taken as it is."""
    if not isinstance(given, dict):
        return given
    return {"below": given.get("below", default.below), "settings": {**default.settings, **given.get("settings", {})},
            **{k: v for k, v in given.items() if k not in ("below", "settings")}}


def check_settings(rules: Mapping[str, Rule], allowed: set[str], where: str) -> None:
    """Raise ValueError naming the rule and setting when a rule sets something the stage does not have."""
    for name, rule in rules.items():
        unknown = sorted(set(rule.settings) - allowed)
        if unknown:
            raise ValueError(f"{where}.{name}.settings names {', '.join(unknown)}, which the rule cannot set; it can "
                             f"set {', '.join(sorted(allowed))}")


def fire(rules: Mapping[str, Rule], accuracy: float) -> tuple[list[str], dict[str, int | float]]:
    """(the names of the rules that fire at this accuracy, the settings they set, later rules winning)."""
    fired = [name for name, rule in rules.items() if rule.fires(accuracy)]
    settings: dict[str, int | float] = {}
    for name in fired:
        settings.update(rules[name].settings)
    return fired, settings


def measure(model, tokenizer, verify, selection: list, batch: list, *, max_new_tokens: int) -> dict[str, float]:
    """The initial model's accuracy on the rules' measurement items: the target's `selection` items and the `batch`
    rows (items with a prompt and a reference answer) it is about to train on, greedy, scored by `verify`.
    Returns {"accuracy", "items"} for the stage's rules and its log."""
    items = [*selection, *batch]
    if not items:
        raise ValueError("the rules have no items to measure on: the target has no selection items and the batch no "
                         "rows")
    accuracy, _ = skill_accuracy(model, tokenizer, items, verify, max_new_tokens=max_new_tokens)
    return {"accuracy": accuracy, "items": float(len(items))}
