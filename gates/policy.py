"""Gate policy: a versioned YAML file of thresholds, and what it means for a candidate to be blessed.

The semantics follow TFX's Evaluator (docs/library-notes.md), adapted to paired accuracy with confidence intervals:

- A *value threshold* bounds a metric's value (`lower_bound <= value <= upper_bound`, inclusive).
- A *change threshold* bounds the change against the champion, with a direction. It is checked on the
  confidence bound in the unfavourable direction, not on the point estimate: for `higher_is_better`
  the CI low of (candidate - champion) must be >= `absolute`; for `lower_is_better` the CI high must be
  <= `absolute`. Only `<suite>/acc` has a paired delta with a CI, so only it takes change thresholds.
- `<suite>/acc` under a value threshold reads `<suite>/candidate_acc`.
- A metric that is missing (or NaN) fails its threshold.
- Blessing needs at least one applicable threshold and all of them passing: a policy with no thresholds
  blesses nothing.
- First candidate (no champion to compare against): as in TFX, change thresholds are ignored; value
  thresholds on champion-relative metrics (`drift/*`, `*/delta*`, `*/champion_*`, `*/mcnemar_p`) do not
  apply either. Every other value threshold must pass, and if none applies the candidate is not blessed.

Selectors expand a threshold over suites: `{target}` (the skill the update teaches), `{core}` (every core
suite but the target) and `{taught}` (targets taught by earlier promoted updates; may be empty).
"""

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_POLICY = Path(__file__).with_name("default_policy.yaml")
SELECTORS = ("target", "core", "taught")
_CHAMPION_RELATIVE = re.compile(r"^drift/|/(delta|delta_ci_low|delta_ci_high|mcnemar_p|champion_[a-z_]*acc)$")


class PolicyError(ValueError):
    """The policy file is missing or malformed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValueThreshold(_Strict):
    lower_bound: float | None = Field(default=None, description="The metric must be >= this.")
    upper_bound: float | None = Field(default=None, description="The metric must be <= this.")

    @model_validator(mode="after")
    def _some_bound(self):
        if self.lower_bound is None and self.upper_bound is None:
            raise ValueError("a value threshold needs lower_bound, upper_bound or both")
        return self


class ChangeThreshold(_Strict):
    direction: Literal["higher_is_better", "lower_is_better"]
    absolute: float = Field(description="Bound on (candidate - champion) at the unfavourable CI bound.")


class Threshold(_Strict):
    metric: str = Field(description="Metric name; may use {target}, {core} or {taught} for the suite.")
    why: str = Field(default="", description="One line for humans: why the threshold exists.")
    value: ValueThreshold | None = None
    change: ChangeThreshold | None = None

    @model_validator(mode="after")
    def _valid(self):
        if self.value is None and self.change is None:
            raise ValueError(f"threshold on {self.metric!r} has neither a value nor a change threshold")
        for name in re.findall(r"{(\w*)}", self.metric):
            if name not in SELECTORS:
                raise ValueError(f"unknown selector {{{name}}} in {self.metric!r}; use one of "
                                 + ", ".join("{" + s + "}" for s in SELECTORS))
        if self.change is not None and not self.metric.endswith("/acc"):
            raise ValueError(f"change threshold on {self.metric!r}: only '<suite>/acc' metrics have a paired "
                             "delta with a confidence interval")
        return self


class Policy(_Strict):
    policy_version: str = Field(description="Recorded with every decision; bump it on any change.")
    name: str
    description: str = ""
    thresholds: list[Threshold] = Field(default_factory=list)


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    path: Path
    text: str
    sha256: str

    @property
    def version(self) -> str:
        return f"{self.policy.name}@{self.policy.policy_version}"


def load_policy(path: str | Path | None = None) -> LoadedPolicy:
    """Read and validate a policy file; errors say which file and which field is wrong."""
    import yaml

    path = Path(path) if path else DEFAULT_POLICY
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"gate policy {path} cannot be read ({exc.strerror or exc}); "
                          f"pass an existing YAML file (the default is {DEFAULT_POLICY})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"gate policy {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"gate policy {path} must be a mapping with policy_version, name and thresholds")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"gate policy {path} is invalid: {problems}") from exc
    return LoadedPolicy(policy, path.resolve(), text, hashlib.sha256(text.encode()).hexdigest())


@dataclass(frozen=True)
class Check:
    """One threshold applied to one metric: passed True/False, or None when it does not apply."""

    metric: str
    kind: str  # "value" or "change"
    observed: float | None
    requirement: str
    passed: bool | None
    message: str
    limit: float | None = None  # the change threshold's `absolute` (for the chart's margin lines)
    why: str = ""  # the threshold's reason, from the policy file


@dataclass(frozen=True)
class Verdict:
    blessed: bool
    reasons: tuple[str, ...]  # why not blessed (empty when blessed)
    checks: tuple[Check, ...]


def _expand(metric: str, target: str, core: list[str], taught: list[str]) -> list[str]:
    if "{target}" in metric:
        return [metric.replace("{target}", target)]
    if "{core}" in metric:
        return [metric.replace("{core}", c) for c in core]
    if "{taught}" in metric:
        return [metric.replace("{taught}", t) for t in taught]
    return [metric]


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _suite_summary(suite: str, m: dict[str, float]) -> str:
    parts = []
    if _finite(m.get(f"{suite}/champion_acc")) and _finite(m.get(f"{suite}/candidate_acc")):
        parts.append(f"accuracy {100 * m[f'{suite}/champion_acc']:.1f}% -> {100 * m[f'{suite}/candidate_acc']:.1f}%")
    if _finite(m.get(f"{suite}/delta")):
        parts.append(f"delta {_pts(m[f'{suite}/delta'])} points")
    if _finite(m.get(f"{suite}/delta_ci_low")) and _finite(m.get(f"{suite}/delta_ci_high")):
        parts.append(f"95% CI [{_pts(m[f'{suite}/delta_ci_low'])}, {_pts(m[f'{suite}/delta_ci_high'])}]")
    if _finite(m.get(f"{suite}/mcnemar_p")):
        parts.append(f"McNemar p={m[f'{suite}/mcnemar_p']:.2g}")
    lenient_c, lenient_k = m.get(f"{suite}/champion_lenient_acc"), m.get(f"{suite}/candidate_lenient_acc")
    if _finite(lenient_c) and _finite(lenient_k) and _finite(m.get(f"{suite}/delta")):
        lenient_delta = lenient_k - lenient_c
        if m[f"{suite}/delta"] < 0 and lenient_delta > m[f"{suite}/delta"] + 0.01:
            parts.append(f"lenient delta {_pts(lenient_delta)} points: partly a format regression")
    return ", ".join(parts)


def _value_check(name: str, metric: str, vt: ValueThreshold, m: dict[str, float], why: str) -> Check:
    requirement = " and ".join(
        ([f">= {vt.lower_bound:g}"] if vt.lower_bound is not None else [])
        + ([f"<= {vt.upper_bound:g}"] if vt.upper_bound is not None else []))
    observed = m.get(metric)
    if not _finite(observed):
        return Check(name, "value", None, requirement, False,
                     f"{name}: metric {metric} is missing, so the threshold ({requirement}) fails", why=why)
    ok = ((vt.lower_bound is None or observed >= vt.lower_bound)
          and (vt.upper_bound is None or observed <= vt.upper_bound))
    verb = "meets" if ok else "violates"
    msg = f"{name}: {metric} = {observed:.4g} {verb} {requirement}"
    if not ok and name.endswith("/acc"):
        msg += f" ({_suite_summary(name[:-4], m)})"
    return Check(name, "value", float(observed), requirement, ok, msg, why=why)


def _change_check(name: str, ct: ChangeThreshold, m: dict[str, float], why: str) -> Check:
    suite = name[:-len("/acc")]
    if ct.direction == "higher_is_better":
        key, requirement = f"{suite}/delta_ci_low", f"CI low of delta >= {_pts(ct.absolute)} points"
    else:
        key, requirement = f"{suite}/delta_ci_high", f"CI high of delta <= {_pts(ct.absolute)} points"
    bound = m.get(key)
    if not _finite(bound):
        return Check(name, "change", None, requirement, False,
                     f"suite {suite}: metric {key} is missing, so the change threshold ({requirement}) fails",
                     ct.absolute, why)
    ok = bound >= ct.absolute if ct.direction == "higher_is_better" else bound <= ct.absolute
    if ok:
        msg = f"suite {suite}: {requirement} holds ({_suite_summary(suite, m)})"
    elif ct.direction == "higher_is_better" and ct.absolute >= 0:
        msg = (f"suite {suite} did not improve enough: {requirement} required, got {_pts(bound)} "
               f"({_suite_summary(suite, m)})")
    else:
        msg = (f"suite {suite} regressed beyond its margin: {requirement} required, got {_pts(bound)} "
               f"({_suite_summary(suite, m)})")
    return Check(name, "change", float(bound), requirement, ok, msg, ct.absolute, why)


def evaluate_policy(policy: Policy, metrics: dict[str, float], target: str, core: list[str],
                    taught: list[str] | tuple[str, ...] = (), has_champion: bool = True) -> Verdict:
    """Apply every threshold to the metrics; blessed only if at least one applied and all applied passed."""
    checks: list[Check] = []
    for th in policy.thresholds:
        for name in _expand(th.metric, target, list(core), list(taught)):
            if th.value is not None:
                metric = f"{name[:-4]}/candidate_acc" if name.endswith("/acc") else name
                if not has_champion and _CHAMPION_RELATIVE.search(metric):
                    checks.append(Check(name, "value", None, "", None,
                                        f"{name}: value threshold skipped: no champion to compare against"))
                else:
                    checks.append(_value_check(name, metric, th.value, metrics, th.why))
            if th.change is not None:
                if not has_champion:
                    checks.append(Check(name, "change", None, "", None,
                                        f"{name}: change threshold skipped: no champion (first-candidate rule)"))
                else:
                    checks.append(_change_check(name, th.change, metrics, th.why))
    applied = [c for c in checks if c.passed is not None]
    reasons = [c.message for c in applied if not c.passed]
    if not applied:
        reasons.append(f"policy {policy.name}@{policy.policy_version} has no threshold that applies to this "
                       "candidate, and a policy without thresholds blesses nothing")
    return Verdict(blessed=not reasons, reasons=tuple(reasons), checks=tuple(checks))
