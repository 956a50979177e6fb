"""Training one distillation candidate: the rows of every step, the trainer of each method, the guard, resuming.

Every method gets its TRL arguments, held-out callback and prompt format from `continual_opd.training`
and `continual_opd.prompts`, as the teacher stage does. The opd methods use `RoutedDistillationTrainer`:
target rows are scored by the teacher, replay rows by the frozen champion (the anchor).

The guard: before an opd method trains, it samples `GUARD_PROBE_PROMPTS` target prompts from the student
and measures the mean per-token reverse KL to the teacher. A teacher that is broken, untrained or another
model shows up as a huge divergence at step 0, and the stage stops (`DistillationGuardError`) instead of
distilling nonsense. A resumed run (a checkpoint exists) has passed the guard already.
"""

import itertools
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

from continual_opd.compute import DEFAULT_COMPUTE, ComputeConfig
from continual_opd.decoding import answer_tokens, greedy_complete
from continual_opd.modelio import load_model
from continual_opd.prompts import as_trl_completion, as_trl_prompt
from continual_opd.skills import Catalogue
from continual_opd.suites import build_suites, suite_names
from continual_opd.tracking import MetricBuffer
from continual_opd.training import attach, heldout_callback, rollout_args, trainer_args
from tasks import routed_distillation
from tasks.distill_config import ANCHOR_ROUTE, TARGET_ROUTE, DistillationGuardError, DistillConfig
from tasks.rewards import exact_match

GUARD_PROBE_PROMPTS = 64  # target prompts sampled for the step-0 KL guard (fewer make the mean noisy)


def training_rows(targets, cfg: DistillConfig, catalogue: Catalogue,
                  replayed: Sequence[str] | None = None) -> list[dict]:
    """`steps x prompts_per_step` rows in step order, each step with exactly `replay_per_step` replay rows.

    Target rows cycle through the batch (reshuffled each pass); replay rows come from the train splits of
    `replayed` (default: the core skills), an equal share per skill. The order is a pure function of the
    inputs, so a resumed run sees the same steps.
    """
    rng = random.Random(cfg.seed)
    n_replay = cfg.replay_per_step
    n_target = cfg.prompts_per_step - n_replay
    stream: list = []
    while len(stream) < cfg.steps * n_target:
        cycle = list(targets)
        rng.shuffle(cycle)
        stream.extend(cycle)
    replay = []
    if n_replay:
        replayed = list(catalogue.core if replayed is None else replayed)
        per_skill = math.ceil(cfg.steps * n_replay / len(replayed))
        for name in replayed:
            pool = catalogue[name].items("train", per_skill, seed=cfg.seed)  # few-prompt skills (mul) repeat
            replay.extend((pool * math.ceil(per_skill / len(pool)))[:per_skill])
        rng.shuffle(replay)

    def row(item, route):
        return {"prompt": item.prompt, "answer": item.answer, "skill": item.skill, "route": route}

    rows = []
    for step in range(cfg.steps):
        chunk = [row(it, TARGET_ROUTE) for it in stream[step * n_target:(step + 1) * n_target]]
        chunk += [row(it, ANCHOR_ROUTE) for it in replay[step * n_replay:(step + 1) * n_replay]]
        rng.shuffle(chunk)
        rows.extend(chunk)
    return rows


def train_candidate(targets, skill, champion, teacher, cfg: DistillConfig, catalogue: Catalogue, work: Path,
                    logger: MetricBuffer, extra_callbacks: Sequence, replayed: Sequence[str],
                    compute: ComputeConfig = DEFAULT_COMPUTE):
    """Build the method's trainer, guard, train (resuming when a checkpoint exists); returns model, tok, metrics."""
    import torch

    torch.manual_seed(cfg.seed)
    student, tokenizer = load_model(champion.folder)  # trained: fp32 master weights whatever the precision
    eval_sets = build_suites(catalogue, suite_names(catalogue, skill.id), size=cfg.eval_items)
    heldout = heldout_callback(tokenizer, eval_sets, catalogue, logger, every=cfg.eval_every,
                               max_new_tokens=answer_tokens(cfg.max_completion_length), log_prefix="train")
    metrics: dict[str, float] = {}
    if cfg.method in ("opd", "opd_no_replay"):
        trainer = routed_trainer(student, tokenizer, targets, champion, teacher, cfg, catalogue, work, replayed,
                                 compute=compute)
    elif cfg.method == "sft_teacher_samples":
        trainer = sft_trainer(student, tokenizer, targets, teacher, cfg, catalogue, work, compute=compute)
    else:
        trainer = grpo_trainer(student, tokenizer, targets, skill, cfg, work, compute=compute)
    attach(trainer, [heldout, *extra_callbacks], progress="distill",
           progress_logs={f"kl/{TARGET_ROUTE}": "kl", "reward": "reward"})

    checkpoint = last_complete_checkpoint(work / "trainer")
    if cfg.method in ("opd", "opd_no_replay"):
        targets_first = (r for r in trainer.train_dataset if r["route"] == TARGET_ROUTE)
        probe = list(itertools.islice(targets_first, GUARD_PROBE_PROMPTS))
        initial_kl = trainer.measure_route_kl(probe)[TARGET_ROUTE]
        metrics["initial_kl/target"] = initial_kl
        logger.add({"initial_kl/target": initial_kl}, 0)
        logger.flush()
        if checkpoint is None and initial_kl > cfg.max_initial_kl:
            raise DistillationGuardError(
                f"the mean per-token reverse KL from the student to the teacher on {skill.id} prompts is "
                f"{initial_kl:.3f} nats at step 0, above max_initial_kl={cfg.max_initial_kl}: the teacher "
                f"({teacher.model.name} v{teacher.model.version}, {teacher.model.folder}) does not look like a "
                "fine-tuned copy of the champion (broken, untrained or another model). Check the teacher stage, "
                "or raise max_initial_kl if the gap is intended.")
    resumed_from = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
    heldout.evaluate(student, 0)  # the champion's accuracy: the reference for every curve, resumed or not
    started = time.time()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.time() - started
    model = trainer.model
    model.eval()
    metrics.update({f"heldout/{name}_acc": acc for name, acc in heldout.latest.items()})
    metrics.update({f"heldout/{name}_acc_initial": acc for name, acc in heldout.initial.items()})
    metrics.update({"steps": float(trainer.state.global_step), "resumed_from_step": float(resumed_from),
                    "train_seconds": train_seconds, "core_min_delta": min(
                        heldout.latest[c] - heldout.initial[c] for c in catalogue.core if c in heldout.latest)})
    logger.add({f"final/{k}": v for k, v in metrics.items()}, trainer.state.global_step)
    return model, tokenizer, metrics


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose trainer state was written (a save killed midway is skipped)."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1])) if done else None


def _args(cfg: DistillConfig, work: Path, compute: ComputeConfig) -> dict:
    """Every method's arguments: a step of `prompts_per_step` completions, in micro-batches, at `compute`'s
    precision."""
    return trainer_args(output_dir=work / "trainer", steps=cfg.steps, learning_rate=cfg.learning_rate,
                        lr_schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps, seed=cfg.seed,
                        batch_size=cfg.prompts_per_step, micro_batch_size=cfg.micro_batch_size,
                        precision=compute.precision, save_every=cfg.checkpoint_every)


def routed_trainer(student, tokenizer, targets, champion, teacher, cfg: DistillConfig, catalogue: Catalogue,
                   work: Path, replayed: Sequence[str] | None = None, *, compute: ComputeConfig = DEFAULT_COMPUTE):
    """The opd methods: target rows scored by the teacher, replay rows by the frozen champion (the anchor).

    TRL generates the step's `prompts_per_step` completions at once, then accumulates the loss over
    micro-batches, each normalised by the whole step's token count, so the update equals the full batch's.
    """
    from datasets import Dataset
    from trl import DistillationConfig

    teacher_model, _ = load_model(teacher.model.folder, frozen=True, precision=compute.precision)
    teachers = {TARGET_ROUTE: teacher_model}
    if cfg.replay_per_step or cfg.anchor_kl_coef:
        teachers[ANCHOR_ROUTE] = load_model(champion.folder, frozen=True, precision=compute.precision)[0]
    rows = [{**r, "prompt": as_trl_prompt(tokenizer, r["prompt"])}
            for r in training_rows(targets, cfg, catalogue, replayed)]
    args = DistillationConfig(
        **_args(cfg, work, compute), **rollout_args(compute), beta=cfg.beta,
        temperature=cfg.temperature, max_completion_length=cfg.max_completion_length,
        shuffle_dataset=False,  # `training_rows` already fixed each step's mix of target and replay rows
        remove_unused_columns=False,  # keep the `route` column
    )
    return routed_distillation.RoutedDistillationTrainer(
        student, teachers, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        anchor_route=ANCHOR_ROUTE if ANCHOR_ROUTE in teachers else None, anchor_kl_coef=cfg.anchor_kl_coef)


def sft_trainer(student, tokenizer, targets, teacher, cfg: DistillConfig, catalogue: Catalogue, work: Path, *,
                compute: ComputeConfig = DEFAULT_COMPUTE):
    """Off-policy baseline: the teacher samples a completion for every rollout slot; cross-entropy on them."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = training_rows(targets, cfg, catalogue)
    teacher_model, teacher_tok = load_model(teacher.model.folder, frozen=True, precision=compute.precision)
    samples = greedy_complete(teacher_model, teacher_tok, [r["prompt"] for r in rows],
                              max_new_tokens=cfg.max_completion_length, sample=True, temperature=cfg.temperature,
                              seed=cfg.seed)
    del teacher_model
    data = Dataset.from_dict({"prompt": [as_trl_prompt(tokenizer, r["prompt"]) for r in rows],
                              "completion": [as_trl_completion(tokenizer, s) for s in samples]})
    args = SFTConfig(**_args(cfg, work, compute), completion_only_loss=True, max_length=None)
    return SFTTrainer(model=student, args=args, train_dataset=data, processing_class=tokenizer)


def grpo_trainer(student, tokenizer, targets, skill, cfg: DistillConfig, work: Path, *,
                 compute: ComputeConfig = DEFAULT_COMPUTE):
    """RL baseline: GRPO on the student itself, with the skill's verifier as reward."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    data = Dataset.from_dict({"prompt": [as_trl_prompt(tokenizer, it.prompt) for it in targets],
                              "answer": [it.answer for it in targets]})
    args = GRPOConfig(**_args(cfg, work, compute), **rollout_args(compute), num_generations=cfg.grpo_generations,
                      max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, beta=0.0)
    return GRPOTrainer(model=student, processing_class=tokenizer, train_dataset=data, args=args,
                       reward_funcs=[exact_match(skill).for_trl()])
