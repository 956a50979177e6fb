"""The gate on real candidates: updates trained to forget core skills are rejected, replayed opd is not.

Issue 4's acceptance: `opd_no_replay` at a high learning rate and `sft_teacher_samples` visibly lose core
accuracy, and the gate rejects such updates. Nothing here is synthetic: each candidate is trained by the real
distillation stage (`tests.helpers.forgetting.FORGETS_CORE` settings), evaluated by the real forgetting suite, and decided
by the real gate with the default policy. The control, `opd` with replay on the same teacher, data and budget,
must keep every core suite, so a rejection is the method's doing and not a gate that rejects everything.
"""

import uuid

import pytest

from continual_opd import registry
from continual_opd.records import ModelRef
from tests.helpers.quick_models import make_batch, make_teacher

pytestmark = pytest.mark.slow

CORE = ("copy", "reverse", "upper", "refuse")
BUDGET = dict(steps=40, prompts_per_step=64, eval_every=40, eval_items=50, checkpoint_every=40)


@pytest.fixture(scope="module")
def world(home, base_folder, tmp_path_factory):
    """Its own registered model (v1 = the base, @champion), a quick add teacher, and an add batch."""
    import torch

    torch.set_num_threads(1)  # two threads on the 2-core CI machine oversubscribe
    name = f"forgetting-test-{uuid.uuid4().hex[:8]}"
    client = registry.client()
    run = client.create_run(registry.experiment_id("forgetting-tests"))
    v1 = registry.register_folder(base_folder, name, run.info.run_id, {"gate_decision": "bootstrap"}, "base")
    client.set_terminated(run.info.run_id)
    client.set_registered_model_alias(name, registry.CHAMPION, str(v1.version))
    champion = ModelRef(name=name, version=str(v1.version), folder=str(base_folder))
    tmp = tmp_path_factory.mktemp("forgetting")
    teacher = make_teacher(base_folder, tmp / "teacher", steps=40)
    return champion, teacher, make_batch(tmp, n=512)


def gate(world, home, **method):
    """Train one candidate with `method` settings, evaluate it against the champion, and decide."""
    from demo_world.skills import CATALOGUE
    from gates.promotion import GateConfig, decide
    from tasks.distill import distill
    from tasks.distill_config import DistillConfig
    from tasks.evaluate import EvalConfig, evaluate

    champion, teacher, batch = world
    cfg = DistillConfig(**{**BUDGET, **method, "registered_model": champion.name})
    candidate = distill(batch, champion, teacher, cfg, CATALOGUE, home)
    report = evaluate(champion, candidate, "add", EvalConfig(suite_size=300, kl_prompts=128), CATALOGUE, home)
    decision = decide(report, candidate, champion, GateConfig(), CATALOGUE, home)
    return candidate, report, decision


def regression_reason(decision, suite: str) -> str | None:
    """The gate's failure line for a core suite that regressed (the policy writes `suite <name> regressed ...`)."""
    return next((r for r in decision.reasons if r.startswith(f"suite {suite} regressed")), None)


@pytest.mark.parametrize("method", ["opd_no_replay", "sft_teacher_samples"])
def test_the_gate_rejects_a_candidate_that_forgot_core_skills(world, home, method):
    from tests.helpers.forgetting import FORGETS_CORE

    champion = world[0]
    candidate, report, decision = gate(world, home, **FORGETS_CORE[method])

    regressed = [c for c in CORE if report.suites[c].delta_ci_low < -0.02]
    assert regressed, f"{method} was expected to lose core accuracy: " + ", ".join(
        f"{c} {report.suites[c].delta:+.3f}" for c in CORE)
    assert not decision.promoted
    for c in CORE:  # every suite past its margin is named as a failure with its CI bound; no other core suite is
        reason = regression_reason(decision, c)
        if c in regressed:
            assert reason is not None and f"got {100 * report.suites[c].delta_ci_low:+.1f}" in reason, decision.reasons
        else:
            assert reason is None, reason
    assert registry.aliases(champion.name)[registry.CHAMPION] == champion.version  # the champion did not move
    tags = registry.get_version(champion.name, candidate.model.version).tags
    assert tags["gate_decision"] == "rejected" and tags["method"] == method


def test_replayed_opd_on_the_same_budget_keeps_every_core_suite(world, home):
    candidate, report, decision = gate(world, home, method="opd")

    for c in CORE:
        assert report.suites[c].delta_ci_low >= -0.02, f"opd with replay lost {c}: {report.suites[c]}"
        assert regression_reason(decision, c) is None, decision.reasons
    assert report.kl_core <= 0.05, report.kl_core
