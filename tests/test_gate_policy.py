"""Every rule of the gate policy has a case that passes and a case that fails (TFX-like semantics)."""

import math

import pytest

from gates.policy import DEFAULT_POLICY, Policy, PolicyError, evaluate_policy, load_policy

CORE = ["copy", "reverse", "upper", "refuse"]


def suite(name, champ, cand, low, high, p=0.5):
    return {f"{name}/champion_acc": champ, f"{name}/candidate_acc": cand, f"{name}/delta": cand - champ,
            f"{name}/delta_ci_low": low, f"{name}/delta_ci_high": high, f"{name}/mcnemar_p": p}


def good_metrics(**override):
    """A candidate that learned add and kept every core skill."""
    m = {"drift/kl_core": 0.02, **suite("add", 0.35, 0.90, 0.52, 0.58, 1e-30)}
    for c in CORE:
        m.update(suite(c, 1.0, 0.998, -0.006, 0.0))
    m.update(override)
    return m


def policy(*thresholds, version="t1"):
    return Policy.model_validate({"policy_version": version, "name": "test", "thresholds": list(thresholds)})


def run(pol, metrics, taught=(), has_champion=True):
    return evaluate_policy(pol, metrics, "add", CORE, list(taught), has_champion=has_champion)


# ---- value thresholds ----

def test_value_lower_bound_passes_and_fails():
    pol = policy({"metric": "{core}/acc", "value": {"lower_bound": 0.9}})
    assert run(pol, good_metrics()).blessed
    verdict = run(pol, good_metrics(**{"upper/candidate_acc": 0.85}))
    assert not verdict.blessed
    assert len(verdict.reasons) == 1 and "upper/candidate_acc = 0.85 violates >= 0.9" in verdict.reasons[0]


def test_value_upper_bound_passes_and_fails_inclusive():
    pol = policy({"metric": "drift/kl_core", "value": {"upper_bound": 0.1}})
    assert run(pol, good_metrics(**{"drift/kl_core": 0.1})).blessed  # bounds are inclusive
    verdict = run(pol, good_metrics(**{"drift/kl_core": 0.13}))
    assert not verdict.blessed and "drift/kl_core = 0.13 violates <= 0.1" in verdict.reasons[0]


# ---- change thresholds: on the unfavourable CI bound, not the point estimate ----

def test_change_higher_is_better_is_checked_on_the_ci_low_not_the_point_estimate():
    pol = policy({"metric": "{target}/acc", "change": {"direction": "higher_is_better", "absolute": 0.01}})
    assert run(pol, good_metrics()).blessed
    # The point estimate improved by 3 points, but the CI low (+0.5) is below the required +1.
    verdict = run(pol, good_metrics(**suite("add", 0.35, 0.38, 0.005, 0.055)))
    assert not verdict.blessed
    assert "suite add did not improve enough" in verdict.reasons[0] and "+0.5" in verdict.reasons[0]


def test_change_regression_margin_passes_and_fails_with_numbers_in_the_reason():
    pol = policy({"metric": "{core}/acc", "change": {"direction": "higher_is_better", "absolute": -0.02}})
    assert run(pol, good_metrics(**suite("reverse", 1.0, 0.99, -0.019, -0.004))).blessed
    verdict = run(pol, good_metrics(**suite("reverse", 0.998, 0.95, -0.062, -0.035, 1e-12)))
    assert not verdict.blessed
    (reason,) = verdict.reasons
    for text in ("suite reverse regressed", "99.8% -> 95.0%", "delta -4.8 points", "95% CI [-6.2, -3.5]",
                 "McNemar p=1e-12", "CI low of delta >= -2.0 points"):
        assert text in reason, (text, reason)


def test_change_lower_is_better_is_checked_on_the_ci_high():
    pol = policy({"metric": "upper/acc", "change": {"direction": "lower_is_better", "absolute": 0.0}})
    assert run(pol, good_metrics(**suite("upper", 1.0, 0.99, -0.02, 0.0))).blessed
    assert not run(pol, good_metrics(**suite("upper", 1.0, 0.99, -0.02, 0.004))).blessed


def test_lenient_accuracy_tells_a_format_slip_from_lost_skill():
    pol = policy({"metric": "{core}/acc", "change": {"direction": "higher_is_better", "absolute": -0.02}})
    m = good_metrics(**suite("upper", 1.0, 0.90, -0.12, -0.08))
    m.update({"upper/champion_lenient_acc": 1.0, "upper/candidate_lenient_acc": 1.0})
    (reason,) = run(pol, m).reasons
    assert "format regression" in reason
    m["upper/candidate_lenient_acc"] = 0.90
    assert "format regression" not in run(pol, m).reasons[0]


# ---- missing metrics, empty policies, first candidate ----

def test_a_missing_metric_fails_value_and_change_thresholds():
    pol = policy({"metric": "drift/kl_core", "value": {"upper_bound": 0.1}},
                 {"metric": "mul/acc", "change": {"direction": "higher_is_better", "absolute": -0.02}})
    m = good_metrics()
    del m["drift/kl_core"]
    verdict = run(pol, m)
    assert not verdict.blessed and len(verdict.reasons) == 2
    assert "drift/kl_core is missing" in verdict.reasons[0] and "mul/delta_ci_low is missing" in verdict.reasons[1]
    assert not run(pol, good_metrics(**{"drift/kl_core": math.nan})).blessed  # NaN counts as missing


def test_a_policy_with_no_thresholds_blesses_nothing():
    verdict = run(policy(), good_metrics())
    assert not verdict.blessed and "blesses nothing" in verdict.reasons[0]


def test_first_candidate_ignores_change_thresholds_and_needs_a_value_threshold():
    only_change = policy({"metric": "{core}/acc", "change": {"direction": "higher_is_better", "absolute": -0.02}},
                         {"metric": "drift/kl_core", "value": {"upper_bound": 0.1}})
    no_champion = {f"{c}/candidate_acc": 1.0 for c in CORE} | {"add/candidate_acc": 0.3}
    verdict = run(only_change, no_champion, has_champion=False)
    assert not verdict.blessed and "blesses nothing" in verdict.reasons[0]
    assert all(c.passed is None for c in verdict.checks)  # all skipped: nothing applies without a champion

    with_value = policy({"metric": "{core}/acc", "value": {"lower_bound": 0.9},
                         "change": {"direction": "higher_is_better", "absolute": -0.02}},
                        {"metric": "drift/kl_core", "value": {"upper_bound": 0.1}})
    assert run(with_value, no_champion, has_champion=False).blessed
    assert not run(with_value, no_champion | {"copy/candidate_acc": 0.5}, has_champion=False).blessed


# ---- selectors ----

def test_core_selector_expands_to_every_core_suite_but_the_target():
    pol = policy({"metric": "{core}/acc", "change": {"direction": "higher_is_better", "absolute": -0.02}})
    verdict = run(pol, good_metrics())
    assert sorted(c.metric for c in verdict.checks) == sorted(f"{c}/acc" for c in CORE)


def test_taught_selector_passes_fails_and_is_empty_before_anything_was_taught():
    pol = policy({"metric": "{target}/acc", "change": {"direction": "higher_is_better", "absolute": 0.01}},
                 {"metric": "{taught}/acc", "change": {"direction": "higher_is_better", "absolute": -0.03}})
    assert run(pol, good_metrics()).blessed  # nothing taught yet: the rule expands to no check
    kept = good_metrics(**suite("sub", 0.92, 0.91, -0.025, 0.005))
    assert run(pol, kept, taught=["sub"]).blessed
    forgot = good_metrics(**suite("sub", 0.92, 0.70, -0.25, -0.19))
    verdict = run(pol, forgot, taught=["sub"])
    assert not verdict.blessed and "suite sub regressed" in verdict.reasons[0]
    assert not run(pol, good_metrics(), taught=["sub"]).blessed  # taught but not evaluated: missing fails


# ---- the default policy, rule by rule ----

def test_default_policy_blesses_a_good_update_and_rejects_each_violation():
    pol = load_policy().policy
    assert run(pol, good_metrics()).blessed
    violations = {
        "add": suite("add", 0.35, 0.355, -0.01, 0.02),                # target did not improve
        "reverse": suite("reverse", 1.0, 0.96, -0.052, -0.029),       # core regressed beyond 2 points
        "copy": {"copy/candidate_acc": 0.85},                          # core below its absolute floor
        "drift/kl_core": {"drift/kl_core": 0.056},                    # drift above the cap (opd_no_replay, lr 1e-3)
    }
    for name, override in violations.items():
        verdict = run(pol, good_metrics(**override))
        assert not verdict.blessed, name
        assert any(name in r for r in verdict.reasons), (name, verdict.reasons)
    verdict = run(pol, good_metrics(**suite("sub", 0.9, 0.8, -0.13, -0.07)), taught=["sub"])
    assert not verdict.blessed and "suite sub regressed" in verdict.reasons[0]


def test_default_policy_first_candidate_rules():
    pol = load_policy().policy
    no_champion = {f"{c}/candidate_acc": 0.99 for c in CORE} | {"add/candidate_acc": 0.4}
    verdict = run(pol, no_champion, has_champion=False)
    assert verdict.blessed
    assert {c.metric for c in verdict.checks if c.passed is not None} == {f"{c}/acc" for c in CORE}
    assert not run(pol, no_champion | {"refuse/candidate_acc": 0.5}, has_champion=False).blessed


# ---- loading ----

def test_the_packaged_policy_is_versioned_and_hashed():
    loaded = load_policy()
    assert loaded.path == DEFAULT_POLICY.resolve()
    assert loaded.version == f"default@{loaded.policy.policy_version}"
    assert len(loaded.sha256) == 64


@pytest.mark.parametrize("body,message", [
    ("policy_version: '1'\nname: x\nthresholds:\n  - metric: add/acc\n    chnage: {}\n", "chnage"),
    ("policy_version: '1'\nname: x\nthresholds:\n  - metric: drift/kl_core\n"
     "    change: {direction: higher_is_better, absolute: 0}\n", "only '<suite>/acc'"),
    ("policy_version: '1'\nname: x\nthresholds:\n  - metric: '{cores}/acc'\n    value: {lower_bound: 0}\n",
     "unknown selector"),
    ("policy_version: '1'\nname: x\nthresholds:\n  - metric: add/acc\n    value: {}\n", "lower_bound, upper_bound"),
    ("policy_version: '1'\nname: x\nthresholds:\n  - metric: add/acc\n", "neither a value nor a change"),
    ("name: x\nthresholds: []\n", "policy_version"),
    ("thresholds: [unclosed\n", "not valid YAML"),
    ("- just a list\n", "must be a mapping"),
])
def test_malformed_policies_are_refused_with_the_field_named(tmp_path, body, message):
    path = tmp_path / "policy.yaml"
    path.write_text(body)
    with pytest.raises(PolicyError, match="invalid|YAML|mapping") as info:
        load_policy(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_a_missing_policy_file_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy(tmp_path / "nope.yaml")


def test_default_core_margin_is_certifiable_at_the_default_suite_size():
    """Noise alone (no true change, up to 3% of items flipping) must rarely fail the default core margin."""
    from continual_opd.stats import noise_failure_probability
    from continual_opd.suites import DEFAULT_SUITE_SIZE

    (core,) = [t for t in load_policy().policy.thresholds if t.metric == "{core}/acc"]
    margin = -core.change.absolute
    assert noise_failure_probability(DEFAULT_SUITE_SIZE, 0.03, margin) < 0.05
    # ...whereas at 540 items and 5.6% discordance (a -2 point bound on average) it fails half the time.
    assert noise_failure_probability(540, 0.056, margin) == pytest.approx(0.5, abs=0.02)


def test_a_gate_config_with_a_broken_policy_fails_at_construction(tmp_path):
    from pydantic import ValidationError

    from gates.promotion import GateConfig

    assert GateConfig().policy_path() == DEFAULT_POLICY
    path = tmp_path / "p.yaml"
    path.write_text("policy_version: '2'\nname: strict\nthresholds:\n  - metric: '{core}/acc'\n"
                    "    value: {lower_bound: 0.99}\n")
    assert GateConfig(policy=str(path)).policy_path() == path
    with pytest.raises(ValidationError, match="cannot be read"):
        GateConfig(policy=str(tmp_path / "missing.yaml"))
