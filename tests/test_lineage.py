"""Lineage that is true: what a version says it trained with is what trained, and new code trains anew.

- A cold target's rule changes the settings before training; the stage run's `cfg.*` params and the version's
  `config_hash` must be those it trained with, with the rule named (`rules_fired`), and the settings asked for
  kept apart (`requested_config_hash`).
- The registration key and the flow's cache key of a training stage include a fingerprint of the code that trains
  (`continual_opd.fingerprint`): a fix to the trainer must not find the candidate the old code made.
"""

import importlib
import sys
import textwrap

import pytest

from demo_world.skills import CATALOGUE
from tests.helpers.quick_models import make_batch, make_teacher

STUDENTS = "test-lineage-student"


def _tiny(**overrides):
    from tasks.distill_config import DistillConfig

    return DistillConfig(**{**dict(steps=2, prompts_per_step=16, eval_every=2, eval_items=30, checkpoint_every=2,
                                   max_reference_nll=50.0, registered_model=STUDENTS), **overrides})


@pytest.fixture(scope="module")
def quick_teacher(base_folder, tmp_path_factory):
    return make_teacher(base_folder, tmp_path_factory.mktemp("lineage-teacher") / "teacher", steps=2, version="901")


@pytest.mark.slow
def test_a_cold_target_records_the_steps_and_decay_it_trained_with(tmp_path, champion, quick_teacher, home,
                                                                    torch_threads):
    from continual_opd import registry
    from tasks.distill import distill

    cfg = _tiny(seed=301, cold_target={"settings": {"steps": 3, "weight_decay": 0.5, "replay_fraction": 0.625}})
    candidate = distill(make_batch(tmp_path, n=64, skill="mul"), champion, quick_teacher, cfg, CATALOGUE, home)
    trained = cfg.with_settings(cfg.cold_target.settings)
    assert candidate.metrics["cold_target"] == 1.0 and candidate.metrics["steps"] == 3, "mul is cold: 3 steps ran"

    version = registry.get_version(STUDENTS, candidate.model.version)
    run = registry.client().get_run(version.run_id)
    params = run.data.params
    assert (params["cfg.steps"], params["cfg.weight_decay"], params["cfg.replay_fraction"]) == ("3", "0.5", "0.625")
    assert version.tags["config_hash"] == trained.config_hash() != cfg.config_hash()
    assert version.tags["requested_config_hash"] == cfg.config_hash()
    assert version.tags["rules_fired"] == run.data.tags["rules_fired"] == "cold_target"
    assert version.tags["cold_target"] == "true"


def test_the_code_fingerprint_follows_code_and_ignores_comments(tmp_path, monkeypatch):
    from continual_opd.fingerprint import training_code

    module = tmp_path / "lineage_probe_trainer.py"
    monkeypatch.syspath_prepend(str(tmp_path))

    def fingerprint(source: str) -> str:
        module.write_text(textwrap.dedent(source))
        sys.modules.pop("lineage_probe_trainer", None)
        importlib.invalidate_caches()
        training_code.cache_clear()
        return training_code(("lineage_probe_trainer",))

    before = fingerprint('"""A trainer."""\ndef loss(x):\n    return x * 2\n')
    assert fingerprint('"""Another docstring."""\n# a comment\ndef loss(x):\n\n    return x * 2\n') == before
    assert fingerprint('"""A trainer."""\ndef loss(x):\n    return x * 3\n') != before
    training_code.cache_clear()


def test_the_flows_cache_key_of_a_training_stage_follows_the_training_code(monkeypatch):
    from flows import continual_update

    policy = continual_update.trains_with(("tasks.distill_training",))
    key_fn = next(p for p in policy.policies if type(p).__name__ == "CacheKeyFnPolicy").cache_key_fn
    before = key_fn(None, {})
    monkeypatch.setattr(continual_update, "training_code", lambda modules: "a fixed trainer")
    assert key_fn(None, {}) == "a fixed trainer" != before
    assert "parent_run_id" in next(p for p in policy.policies if type(p).__name__ == "Inputs").exclude


@pytest.mark.slow
def test_a_changed_trainer_trains_a_new_candidate_instead_of_reusing_the_old_one(tmp_path, champion, quick_teacher,
                                                                                 home, monkeypatch, torch_threads):
    from continual_opd import registry, stage_runner
    from tasks.distill import distill

    batch, cfg = make_batch(tmp_path, n=64), _tiny(seed=302)
    first = distill(batch, champion, quick_teacher, cfg, CATALOGUE, home)
    again = distill(batch, champion, quick_teacher, cfg, CATALOGUE, home)
    assert again.model.version == first.model.version, "same inputs and code: the candidate is found, not retrained"

    real = stage_runner.training_code
    monkeypatch.setattr(stage_runner, "training_code", lambda modules: "f" * 16 if "tasks.distill" in modules
                        else real(modules))  # as if tasks/distill_training.py had been fixed
    fixed = distill(batch, champion, quick_teacher, cfg, CATALOGUE, home)
    assert fixed.model.version != first.model.version, "new training code reused the old code's candidate"
    assert registry.get_version(STUDENTS, fixed.model.version).tags["code_fingerprint"] == "f" * 16
