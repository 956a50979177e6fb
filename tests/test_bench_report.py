"""The benchmark's arithmetic: gain shares, steps and tokens to 50% / 90% of the teacher's gain, seed spreads."""

import math

import pytest

from bench import report


def point(step, add, tokens, core=1.0, kl=0.0, seconds=None):
    return {"step": step, "acc/add": add, "student_tokens": tokens, "kl_core": kl,
            "train_seconds": seconds if seconds is not None else step / 10,
            **{f"acc/{c}": core for c in ("copy", "reverse", "upper", "refuse")}}


def run(points, **extra):
    return {"config": {"steps": points[-1]["step"]}, "points": points, **extra}


def test_steps_and_tokens_to_each_level_are_the_first_probe_reaching_it():
    # base 0.30, teacher 0.70: 50% of the gain is 0.50, 90% is 0.66
    r = report.per_run(run([point(0, 0.30, 0), point(10, 0.45, 1000), point(20, 0.52, 2000),
                            point(30, 0.66, 3000), point(40, 0.64, 4000)]), teacher_acc=0.70)
    assert (r["steps_50"], r["tokens_50"]) == (20, 2000)
    assert (r["steps_90"], r["tokens_90"]) == (30, 3000)
    assert math.isclose(r["gain_share"], (0.64 - 0.30) / 0.40)
    assert r["final_add"] == 0.64 and r["steps"] == 40


def test_a_run_that_never_reaches_a_level_has_none_and_the_table_says_how_many_seeds_did():
    never = run([point(0, 0.30, 0), point(10, 0.40, 1000)])
    assert report.per_run(never, teacher_acc=0.70)["steps_50"] is None
    assert report._mean_sd([10, None, 30]) == "20.0 ± 14.1 (2/3 seeds)"


def test_core_change_is_measured_against_the_start_of_the_same_run():
    r = report.per_run(run([point(0, 0.3, 0, core=1.0), point(10, 0.5, 10, core=0.8)]), teacher_acc=0.7)
    assert all(math.isclose(d, -0.2) for d in r["core_delta"].values())
    assert math.isclose(r["core_delta_min"], -0.2)


def test_off_policy_tokens_are_the_teachers_samples_spread_over_the_steps():
    sft = run([point(0, 0.3, 0), point(50, 0.6, 0), point(100, 0.7, 0)], teacher_tokens=1e6)
    r = report.per_run(sft, teacher_acc=0.7)
    assert r["tokens_50"] == 5e5 and r["student_tokens"] == 0


def test_no_room_to_gain_gives_nan_not_a_division_error():
    assert math.isnan(report.gain(point(10, 0.5, 0), point(0, 0.5, 0), teacher_acc=0.5))


def _ablation_part(seed, teacher_accuracy, **variants):
    row = dict(sub_gain=0.3, add_change=-0.01, add_ci_low=-0.02, worst_core_change=0.0, kl_core=1e-4,
               train_seconds=100.0)
    return {"seed": seed, "teacher": {"initial_accuracy": 0.1, "accuracy": teacher_accuracy},
            "variants": {name: {**row, **values} for name, values in variants.items()}}


def test_the_ablation_table_merges_a_seed_run_in_parts_and_refuses_parts_of_different_teachers():
    from bench.ablation import ablation_markdown

    parts = [_ablation_part(2, 0.5, before={"add_change": -0.2}), _ablation_part(0, 0.4, before={"add_change": -0.1}),
             _ablation_part(2, 0.5, combination={"add_change": 0.0})]
    table = ablation_markdown(parts)
    assert table.startswith("Seeds 0, 2 (sub teacher gain, points: +30.0, +40.0)")
    assert "| before | +30.0 [+30.0, +30.0] | -15.0 [-20.0, -10.0] |" in table
    assert "| combination | +30.0 | +0.0 |" in table, "seed 2's second part is seed 2's, not a third seed"
    with pytest.raises(ValueError, match="different sub teachers"):
        ablation_markdown([*parts, _ablation_part(2, 0.6, own_teachers={})])


def test_the_cold_target_table_gives_each_variants_share_of_the_teachers_gain_and_its_gate_verdict():
    from bench.cold_target import cold_target_markdown

    def suite(champion, candidate, ci_low):
        return {"champion": champion, "candidate": candidate, "delta": candidate - champion, "ci_low": ci_low}

    result = {"seed": 0, "teacher": {"version": "3", "initial_accuracy": 0.0, "accuracy": 0.40},
              "variants": {"default": {"passes_gate_policy": True, "suites": {
                  "mul": suite(0.0, 0.10, 0.06), "add": suite(0.93, 0.924, -0.018),
                  "sub": suite(0.277, 0.271, -0.026)}},
                  "replay_0.625": {"passes_gate_policy": False, "suites": {
                      "mul": suite(0.0, 0.12, 0.07), "add": suite(0.93, 0.918, -0.025),
                      "sub": suite(0.277, 0.254, -0.045)}}}}
    table = cold_target_markdown([result]).splitlines()
    assert table[3] == "| replay_0.625 | 0 | 0.0 -> 12.0 (0.30) | -1.2 (-2.5) | -2.3 (-4.5) | fails |"
    assert table[2] == "| default | 0 | 0.0 -> 10.0 (0.25) | -0.6 (-1.8) | -0.6 (-2.6) | passes |"


def test_every_cold_target_variant_is_a_valid_distillation_setting_that_changes_only_what_it_names():
    """The variants are applied as `bench.cold_target.run` applies them: over the sequence's distillation settings,
    a rule variant given in part (the rest of the rule is the default's)."""
    from bench.cold_target import VARIANTS
    from tasks.distill_config import COLD_TARGET, DistillConfig

    base = DistillConfig()
    for name, variant in VARIANTS.items():
        cfg = base.model_validate({**base.model_dump(), **variant})
        settings = variant.get("cold_target", {}).get("settings", {})
        assert cfg.cold_target.below == COLD_TARGET.below, name
        assert cfg.cold_target.settings == {**COLD_TARGET.settings, **settings}, name
        others = {k: v for k, v in variant.items() if k != "cold_target"}
        assert cfg.model_dump(exclude={"cold_target"}) == {**base.model_dump(exclude={"cold_target"}), **others}, name
    assert VARIANTS["default"] == {} and VARIANTS["steps_600"]["cold_target"]["settings"] == {
        "steps": 600, "weight_decay": 0.0}
