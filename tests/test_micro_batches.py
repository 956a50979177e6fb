"""Micro-batches bound memory without changing the update: `prompts_per_step` stays the rollout budget.

TRL's on-policy trainers sample a whole step at once (the generation batch), then run the loss over
micro-batches and accumulate gradients. The accumulated loss and gradient must equal the full batch's:
checked here on a CPU for the routed distillation trainer and the teacher stage's GRPO, each built by its
stage's own code, on the same prompts and seed, with gradient clipping off so a scale error would show.
"""

import pytest

from demo_world.skills import CATALOGUE
from tests.helpers.quick_models import make_teacher
from tests.helpers.training_probes import first_step_recorder


def test_a_micro_batch_must_divide_the_step_and_the_error_says_what_to_set():
    from pydantic import ValidationError

    from flows.params import ParamsError, load_params
    from tasks.distill_config import DistillConfig
    from tasks.teacher_rl import TeacherConfig

    with pytest.raises(ValidationError, match=r"distill.micro_batch_size \(48\) must divide distill.prompts_per_step "
                                              r"\(256\).*one of 1, 2, 4, 8, 16, 32, 64, 128, 256"):
        DistillConfig(prompts_per_step=256, micro_batch_size=48)
    with pytest.raises(ValidationError, match=r"teacher.micro_batch_size \(512\) must divide "
                                              r"teacher.prompts_per_step x teacher.num_generations \(256\)"):
        TeacherConfig(prompts_per_step=32, num_generations=8, micro_batch_size=512)
    with pytest.raises(ParamsError, match="distill.micro_batch_size"):
        load_params("b.jsonl", overrides=["distill.micro_batch_size=48"])
    assert DistillConfig(prompts_per_step=256, micro_batch_size=64).micro_batch_size == 64
    assert TeacherConfig(prompts_per_step=32, num_generations=8, micro_batch_size=64).completions_per_step == 256


def test_trainer_arguments_split_the_step():
    from continual_opd.training import trainer_args

    args = trainer_args(output_dir="/tmp/unused", steps=1, learning_rate=1e-3, lr_schedule="linear", warmup_steps=0,
                        seed=0, batch_size=256, micro_batch_size=32)
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (32, 8)


def _assert_same_step(full, micro):
    import torch

    assert full.grads and set(full.grads) == set(micro.grads)
    assert any(bool(g.abs().sum() > 0) for g in full.grads.values()), "a zero gradient would prove nothing"
    assert micro.loss == pytest.approx(full.loss, rel=1e-4, abs=1e-7)
    for name, grad in full.grads.items():
        torch.testing.assert_close(micro.grads[name], grad, rtol=1e-3, atol=1e-7, msg=name)


@pytest.mark.slow
def test_routed_distillation_micro_batches_give_the_full_batch_loss_and_gradient(tmp_path, base_folder):
    import torch

    from continual_opd.modelio import load_model
    from continual_opd.records import ModelRef
    from continual_opd.training import attach
    from tasks.distill_config import DistillConfig
    from tasks.distill_training import routed_trainer

    torch.set_num_threads(1)
    teacher = make_teacher(base_folder, tmp_path / "teacher")
    champion = ModelRef(name="base", version="1", folder=str(base_folder))
    targets = CATALOGUE["add"].items("train", 64, seed=5)
    steps = {}
    for micro in (None, 2):  # 8 completions (2 of them core replay scored by the anchor) in 1 pass or in 4
        cfg = DistillConfig(steps=1, prompts_per_step=8, micro_batch_size=micro, learning_rate=1e-4,
                            eval_every=10, checkpoint_every=10, seed=4)
        student, tok = load_model(base_folder, device="cpu")
        trainer = routed_trainer(student, tok, targets, champion, teacher, cfg, CATALOGUE, tmp_path / f"m{micro}")
        assert trainer.args.gradient_accumulation_steps == (4 if micro else 1)
        steps[micro] = first_step_recorder()
        attach(trainer, [steps[micro]]).train()
    _assert_same_step(steps[None], steps[2])


@pytest.mark.slow
def test_teacher_grpo_micro_batches_give_the_full_batch_loss_and_gradient(tmp_path, base_folder):
    import torch

    from continual_opd.compute import DEFAULT_COMPUTE
    from continual_opd.modelio import load_model
    from tasks.rewards import exact_match
    from tasks.teacher_rl import TeacherConfig, _run_grpo

    torch.set_num_threads(1)
    rows = CATALOGUE["add"].items("train", 64, seed=9)
    rewards = [(exact_match(CATALOGUE["add"]), 1.0)]
    steps = {}
    for micro in (None, 4):  # 8 prompts x 4 completions in 1 pass or in 8
        cfg = TeacherConfig(steps=1, prompts_per_step=8, num_generations=4, micro_batch_size=micro,
                            learning_rate=1e-4, seed=6)
        model, tok = load_model(base_folder, device="cpu")
        steps[micro] = first_step_recorder()
        _run_grpo(model, tok, rows, rewards, cfg, tmp_path / f"g{micro}", steps[micro], DEFAULT_COMPUTE)
    _assert_same_step(steps[None], steps[4])
