"""Training one distillation candidate: the rows of every step, the trainer of each method, the guard, resuming.

Every method gets its TRL arguments, held-out callback and prompt format from `continual_opd.training`
and `continual_opd.prompts`, as the teacher stage does. The opd methods use `RoutedDistillationTrainer`:
target rows are scored by the teacher, core replay rows by the frozen champion (the anchor), and the replay
rows of a skill taught by an earlier update by that update's own teacher (route `taught:<skill>`) when
`replay_teachers="own"`.

The guard, before an opd method trains (a resumed run has passed it already), stops the stage with
`DistillationGuardError` instead of distilling nonsense: the teacher's mean per-token NLL of the batch's
reference answers must be at most `max_reference_nll`. A teacher that knows the skill gives them a small NLL;
a random, corrupted or wrong-skill teacher a large one (docs/benchmark.md measures both on the demo world). The
student's step-0 reverse KL to the teacher is logged beside it (`initial_kl/target`).

Before training, the stage's rules (`apply_rules`) read the champion's accuracy on the target's selection items and
the batch's prompts (`continual_opd.rules.measure`); the settings that train are those after the rules.
"""

import itertools
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from continual_opd.compute import DEFAULT_COMPUTE, ComputeConfig
from continual_opd.decoding import answer_tokens, greedy_complete
from continual_opd.modelio import load_model
from continual_opd.prompts import as_trl_completion, as_trl_prompt
from continual_opd.skills import Catalogue
from continual_opd import rules
from continual_opd.suites import selection_suites, suite_names
from continual_opd.supervised import answer_nll
from continual_opd.tracking import MetricBuffer
from continual_opd.training import attach, heldout_callback, rollout_args, trainer_args
from tasks import routed_distillation
from tasks.distill_config import (ANCHOR_ROUTE, LR_SCHEDULE, ROUTED_METHODS, TARGET_ROUTE, TAUGHT_ROUTE, TEMPERATURE,
                                  DistillationGuardError, DistillConfig)
from tasks.rewards import exact_match

GUARD_PROBE_PROMPTS = 64  # target prompts sampled for the step-0 KL guard (fewer make the mean noisy)
GUARD_BATCH = 8  # reference answers per forward: full-vocabulary logits of long answers on a real model are large


def training_rows(targets, cfg: DistillConfig, catalogue: Catalogue,
                  replayed: Sequence[str] | None = None) -> list[dict]:
    """`steps x prompts_per_step` rows in step order, each step with exactly `replay_per_step` replay rows.

    Target rows cycle through the batch (reshuffled each pass); replay rows come from the train splits of
    `replayed` (default: the core skills), in the shares of `replay_shares`. The order is a pure function of the
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
        for name, share in replay_shares(replayed, catalogue, cfg.taught_replay_weight).items():
            per_skill = math.ceil(cfg.steps * n_replay * share)
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


def replay_shares(replayed: Sequence[str], catalogue: Catalogue, taught_weight: float) -> dict[str, float]:
    """Share of the replay rows per replayed skill: `taught_weight` shares for each skill taught by an earlier
    update (every replayed skill that is not a core skill), one share for each core skill.

    Why: with equal shares a sub update replayed 13 add rows a step against 179 sub rows, and the sub gradient
    erased add (-42 points); 8 shares (~85 add rows a step) kept add within 1-3 points at the same sub gain.
    """
    weights = {s: (1.0 if s in catalogue.core else taught_weight) for s in replayed}
    weights = {s: w for s, w in weights.items() if w > 0}
    total = sum(weights.values())
    return {s: w / total for s, w in weights.items()}


def train_candidate(targets, skill, champion, teacher, cfg: DistillConfig, catalogue: Catalogue, work: Path,
                    logger: MetricBuffer, extra_callbacks: Sequence, replayed: Sequence[str],
                    compute: ComputeConfig = DEFAULT_COMPUTE, own_teachers: Mapping[str, str] | None = None,
                    on_rules: Callable[[DistillConfig, list[str]], None] | None = None):
    """Apply the rules, build the method's trainer, guard, train (resuming when a checkpoint exists).

    Returns (model, tokenizer, metrics, the settings that trained after the rules, the names of the rules that
    fired; `on_rules` gets both before training starts). `own_teachers` maps a replayed taught skill to the folder
    of the teacher that taught it (opd only).
    The returned model is a plain `PreTrainedModel`: a LoRA adapter (`lora_rank`) is merged into it.
    """
    import torch

    torch.manual_seed(cfg.seed)
    student, tokenizer = load_model(champion.folder)  # trained: fp32 master weights whatever the precision
    # the target, the core skills and each replayed taught skill, on selection items: a user watching an update sees
    # the drift of what earlier updates taught while it trains (the demo's mul update: add 93% -> 70% at step 20)
    names = suite_names(catalogue, skill.id, replayed)
    eval_sets = selection_suites(catalogue, names, cfg.eval_items, trained={it.prompt for it in targets})
    heldout = heldout_callback(tokenizer, eval_sets, catalogue, logger, every=cfg.eval_every,
                               max_new_tokens=answer_tokens(cfg.max_completion_length), log_prefix="train")
    heldout.evaluate(student, 0)  # the champion's accuracy: the reference for every curve, resumed or not
    measured = (rules.measure(student, tokenizer, skill.verify, eval_sets[skill.id], targets,
                              max_new_tokens=answer_tokens(cfg.max_completion_length))
                if cfg.method in ROUTED_METHODS else None)
    cfg, fired, metrics = apply_rules(cfg, measured)
    if on_rules is not None:
        on_rules(cfg, fired)  # the lineage: the settings that train, after every rule
    metrics["replay_fraction"] = cfg.replay_per_step / cfg.prompts_per_step  # the share of each step's rows
    if cfg.method in ROUTED_METHODS:
        trainer = routed_trainer(student, tokenizer, targets, champion, teacher, cfg, catalogue, work, replayed,
                                 compute=compute, own_teachers=own_teachers)
    elif cfg.method == "sft_teacher_samples":
        trainer = sft_trainer(student, tokenizer, targets, teacher, cfg, catalogue, work, compute=compute)
    else:
        trainer = grpo_trainer(student, tokenizer, targets, skill, cfg, work, compute=compute)
    attach(trainer, [heldout, *extra_callbacks], progress="distill",
           progress_logs={f"kl/{TARGET_ROUTE}": "kl", "reward": "reward"})

    checkpoint = last_complete_checkpoint(work / "trainer")
    if cfg.method in ROUTED_METHODS:
        metrics.update(guard(trainer, tokenizer, targets, skill, teacher, cfg, resuming=checkpoint is not None))
        logger.add(dict(metrics), 0)
        logger.flush()
    resumed_from = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
    started = time.time()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.time() - started
    model = merged(trainer.model)
    model.eval()
    metrics.update({f"heldout/{name}_acc": acc for name, acc in heldout.latest.items()})
    metrics.update({f"heldout/{name}_acc_initial": acc for name, acc in heldout.initial.items()})
    metrics.update({"steps": float(trainer.state.global_step), "resumed_from_step": float(resumed_from),
                    "train_seconds": train_seconds, "core_min_delta": min(
                        heldout.latest[c] - heldout.initial[c] for c in catalogue.core if c in heldout.latest)})
    logger.add({f"final/{k}": v for k, v in metrics.items()}, trainer.state.global_step)
    return model, tokenizer, metrics, cfg, fired


def apply_rules(cfg: DistillConfig, measured: dict[str, float] | None) -> tuple[DistillConfig, list[str], dict]:
    """The stage's rules (`continual_opd.rules`), on the champion's accuracy over the rules' measurement items (the
    target's selection items and the batch's prompts, `rules.measure`): (the settings that train, the rules that
    fired, the metrics that record all three).

    `cold_target` (routed methods only): a skill the champion cannot do at all is learned from the batch's prompts
    alone, and its first steps (a forward KL of about 9 nats on the student's garbage samples) pull hardest on the
    skills taught before. The rule's demo-world settings train it 12 times longer, with 62.5% of each step replay
    and AdamW decay 1.0 (docs/benchmark.md, "The cold-target rule", measures each of them).
    """
    if cfg.method not in ROUTED_METHODS or measured is None:
        return cfg, [], {}
    fired, settings = rules.fire({"cold_target": cfg.cold_target}, measured["accuracy"])
    metrics = {"cold_target/champion_accuracy": measured["accuracy"], "cold_target/measured_items": measured["items"],
               "cold_target": float("cold_target" in fired)}
    return (cfg.with_settings(settings) if fired else cfg), fired, metrics


def guard(trainer, tokenizer, targets, skill, teacher, cfg: DistillConfig, resuming: bool) -> dict[str, float]:
    """Step-0 measurements; raises `DistillationGuardError` when the teacher's NLL of the batch's reference answers
    is over `max_reference_nll`, unless the run resumes (it passed the guard before). The student's reverse KL to
    the teacher is logged beside it, not guarded on: it cannot tell a confident teacher of a skill the student
    lacks from a broken one."""
    targets_first = (r for r in trainer.train_dataset if r["route"] == TARGET_ROUTE)
    probe = list(itertools.islice(targets_first, GUARD_PROBE_PROMPTS))
    initial_kl = trainer.measure_route_kl(probe)[TARGET_ROUTE]
    reference = answer_nll(trainer.teachers[TARGET_ROUTE], tokenizer,
                           [(it.prompt, it.answer) for it in targets[:GUARD_PROBE_PROMPTS]],
                           batch_size=GUARD_BATCH)
    who = f"the teacher ({teacher.model.name} v{teacher.model.version}, {teacher.model.folder})"
    if not resuming and reference > cfg.max_reference_nll:
        raise DistillationGuardError(
            f"{who} gives the batch's reference {skill.id} answers a mean NLL of {reference:.3f} nats per token, "
            f"above max_reference_nll={cfg.max_reference_nll}: it does not know the answers it is to teach "
            "(broken, untrained, or a model of another skill). Check the teacher stage's report.")
    return {"initial_kl/target": initial_kl, "initial/teacher_reference_nll": reference}


def merged(model):
    """The trained model as a plain `PreTrainedModel`: a peft (LoRA) model has its adapter merged in."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


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
                        lr_schedule=LR_SCHEDULE, warmup_steps=0, seed=cfg.seed,
                        batch_size=cfg.prompts_per_step, micro_batch_size=cfg.micro_batch_size,
                        precision=compute.precision, save_every=cfg.checkpoint_every, weight_decay=cfg.weight_decay)


def routed_trainer(student, tokenizer, targets, champion, teacher, cfg: DistillConfig, catalogue: Catalogue,
                   work: Path, replayed: Sequence[str] | None = None, *, compute: ComputeConfig = DEFAULT_COMPUTE,
                   own_teachers: Mapping[str, str] | None = None):
    """The opd methods: target rows scored by the teacher, core replay rows by the frozen champion (the anchor),
    the replay rows of a skill in `own_teachers` by the teacher at its folder (route `taught:<skill>`).

    Target rows use the divergence `beta`, every replay route `replay_beta`. TRL generates the step's
    `prompts_per_step` completions at once, then accumulates the loss over micro-batches, each normalised
    by the whole step's token count, so the update equals the full batch's.
    """
    from datasets import Dataset
    from trl import DistillationConfig

    teacher_model, _ = load_model(teacher.model.folder, frozen=True, precision=compute.precision)
    teachers = {TARGET_ROUTE: teacher_model}
    if cfg.replay_per_step:
        teachers[ANCHOR_ROUTE] = load_model(champion.folder, frozen=True, precision=compute.precision)[0]
    rows = route_rows(training_rows(targets, cfg, catalogue, replayed), own_teachers or {})
    for route in sorted({r["route"] for r in rows} - set(teachers)):
        teachers[route] = load_model(own_teachers[route.removeprefix(TAUGHT_ROUTE)], frozen=True,
                                     precision=compute.precision)[0]
    rows = [{**r, "prompt": as_trl_prompt(tokenizer, r["prompt"])} for r in rows]
    args = DistillationConfig(
        **_args(cfg, work, compute), **rollout_args(compute), beta=cfg.beta,
        temperature=TEMPERATURE, max_completion_length=cfg.max_completion_length,
        shuffle_dataset=False,  # `training_rows` already fixed each step's mix of target and replay rows
        remove_unused_columns=False,  # keep the `route` column
    )
    return routed_distillation.RoutedDistillationTrainer(
        student, teachers, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        route_betas={name: cfg.replay_beta for name in teachers if name != TARGET_ROUTE},
        peft_config=lora_config(cfg))


def route_rows(rows: list[dict], own_teachers: Mapping[str, str]) -> list[dict]:
    """Replay rows of a skill in `own_teachers` move from the anchor route to that skill's own route."""
    return [{**r, "route": TAUGHT_ROUTE + r["skill"]} if r["route"] == ANCHOR_ROUTE and r["skill"] in own_teachers
            else r for r in rows]


def lora_config(cfg: DistillConfig):
    """peft's LoRA on every linear layer but the output head, or None (full fine-tuning) at `lora_rank` 0."""
    if not cfg.lora_rank:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def sft_trainer(student, tokenizer, targets, teacher, cfg: DistillConfig, catalogue: Catalogue, work: Path, *,
                compute: ComputeConfig = DEFAULT_COMPUTE):
    """Off-policy baseline: the teacher samples a completion for every rollout slot; cross-entropy on them."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = training_rows(targets, cfg, catalogue)
    teacher_model, teacher_tok = load_model(teacher.model.folder, frozen=True, precision=compute.precision)
    samples = greedy_complete(teacher_model, teacher_tok, [r["prompt"] for r in rows],
                              max_new_tokens=cfg.max_completion_length, sample=True, temperature=TEMPERATURE,
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
                      max_completion_length=cfg.max_completion_length, temperature=TEMPERATURE, beta=0.0)
    return GRPOTrainer(model=student, processing_class=tokenizer, train_dataset=data, args=args,
                       reward_funcs=[exact_match(skill).for_trl()])
