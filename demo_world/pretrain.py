"""Pretrain the demo world's base model: good at every core skill, deliberately weak at the targets.

Plain torch, because this is the world's physics, not a stage of the product: AdamW at 3e-3 with
warm-up, loss on the answer and EOS only, batches mixing core and target skills. Addition
has a sharp phase transition, so we evaluate every `eval_every` steps and stop as soon as the base is
good at the core skills and inside the requested band on the target skill. The steps, the loss and the
latest accuracies show as progress (`continual_opd.progress`).
"""

import math
import random
import time
from dataclasses import dataclass, field

from continual_opd.decoding import skill_accuracy
from continual_opd.progress import Progress
from demo_world.skills import CORE_SKILLS, SKILLS


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    lr: float = 3e-3
    warmup: int = 100
    batch_size: int = 128
    max_steps: int = 3000
    eval_every: int = 25
    eval_items: int = 200
    # Fraction of each batch per target skill; the rest is shared equally by the core skills. Reverse is
    # learned late, so phase 1 is core-heavy until every core skill is ready, then phase 2 adds the targets.
    core_first_mix: dict = field(default_factory=lambda: {"add": 0.08, "sub": 0.04})
    mix: dict = field(default_factory=lambda: {"add": 0.35, "sub": 0.15})
    stop_target: str = "add"
    stop_target_min: float = 0.35
    stop_target_max: float = 0.65
    stop_core_min: float = 0.97


def encode_examples(tokenizer, pairs, device):
    """Right-padded <bos> prompt answer <eos>; labels only on answer and EOS."""
    import torch

    ids, labels = [], []
    for prompt, answer in pairs:
        p = tokenizer(prompt)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
    attn = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
    lab = torch.tensor([y + [-100] * (width - len(y)) for y in labels], device=device)
    return input_ids, attn, lab


def evaluate_skills(model, tokenizer, eval_sets) -> dict[str, float]:
    return {sid: skill_accuracy(model, tokenizer, items, SKILLS[sid].verify)[0] for sid, items in eval_sets.items()}


def recipe_data(cfg: PretrainConfig) -> tuple[dict, dict]:
    """The train pools and the held-out early-stopping sets one pretraining draws, per skill."""
    skills = [*CORE_SKILLS, *cfg.mix]
    pools = {sid: SKILLS[sid].items("train", 2500, seed=cfg.seed) for sid in skills}
    eval_sets = {sid: SKILLS[sid].items("heldout", cfg.eval_items, seed=cfg.seed + 1000) for sid in skills}
    return pools, eval_sets


def pretrain(model, tokenizer, cfg: PretrainConfig, log=print) -> dict:
    """Train in place; returns the accuracies at the stopping step and the curve of evaluations."""
    import torch

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = model.device
    def batch_weights(mix):
        core_share = (1.0 - sum(mix.values())) / len(CORE_SKILLS)
        weights = {**{c: core_share for c in CORE_SKILLS}, **mix}
        return list(weights), list(weights.values())

    names, probs = batch_weights(cfg.core_first_mix)
    pools, eval_sets = recipe_data(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * max(0.1, 0.5 * (1 + math.cos(math.pi * s / cfg.max_steps)))
    )
    curve, start, acc = [], time.time(), {}
    model.train()
    with Progress("pretrain", cfg.max_steps) as progress:
        for step in range(1, cfg.max_steps + 1):
            chosen = rng.choices(names, probs, k=cfg.batch_size)
            pairs = [(it.prompt, it.answer) for it in (rng.choice(pools[s]) for s in chosen)]
            input_ids, attn, labels = encode_examples(tokenizer, pairs, device)
            loss = model(input_ids=input_ids, attention_mask=attn, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            shown, stop = {"loss": loss.item()}, False
            if step % cfg.eval_every == 0:
                acc = evaluate_skills(model, tokenizer, eval_sets)
                curve.append({"step": step, "loss": shown["loss"], **acc})
                core_ok = all(acc[c] >= cfg.stop_core_min for c in CORE_SKILLS)
                target = acc[cfg.stop_target]
                shown.update({cfg.stop_target: target, "core": min(acc[c] for c in CORE_SKILLS)})
                stop = core_ok and cfg.stop_target_min <= target <= cfg.stop_target_max
                if core_ok:
                    names, probs = batch_weights(cfg.mix)
                if core_ok and target > cfg.stop_target_max:
                    raise RuntimeError(
                        f"pretraining overshot: {cfg.stop_target} reached {target:.2f} > {cfg.stop_target_max} "
                        f"at step {step} before the core skills were ready; try another seed or a smaller eval_every"
                    )
            progress.update(step, shown)
            if stop:
                break
        else:
            raise RuntimeError(f"pretraining did not reach the stopping band in {cfg.max_steps} steps: {acc}")
    log(f"pretrain: stopped at step {step} ({time.time() - start:.0f}s): "
        + " ".join(f"{k}={v:.2f}" for k, v in acc.items()))
    model.eval()
    return {"steps": step, "seconds": time.time() - start, "accuracy": acc, "curve": curve}
