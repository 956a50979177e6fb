"""Teacher warm start: supervised steps on the batch's reference answers, for a skill the initial model cannot do.

GRPO learns from differences in reward inside a group of samples. When the initial model answers (almost) no
held-out item of the skill (the demo's `mul`: 0%), every sample scores 0, every advantage is 0, and RL has
nothing to learn from. The teacher stage's `warm_start` rule (`continual_opd.rules`) then fires: cross-entropy on
the batch's own answers, plus a few train items of every other skill of the catalogue so the teacher keeps the
answer format, until the selection set reaches the rule's `stop_at`; GRPO takes it from there. The teacher gate
still compares the result against the initial model, and the warm start is recorded in the teacher's lineage.
"""

import random
import time

from continual_opd.decoding import skill_accuracy
from continual_opd.skills import Catalogue, Item, Skill
from continual_opd.supervised import encode_answers

OTHER_SKILL_ITEMS = 4  # train items of every other skill in each warm-start step
EVAL_EVERY = 50  # warm-start steps between two measurements of the selection set


def warm_start(model, tokenizer, rows: list[Item], skill: Skill, catalogue: Catalogue, eval_set: list[Item], *,
               learning_rate: float, steps: int, stop_at: float, rows_per_step: int, seed: int,
               max_new_tokens: int) -> dict:
    """Train `model` in place; returns {steps, accuracy (selection set), curve, seconds}."""
    import torch

    started = time.time()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    others = [s for s in catalogue.values() if s.id != skill.id]
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    accuracy, step, curve = 0.0, 0, []
    for step in range(1, steps + 1):
        model.train()
        mix = rng.sample(rows, min(rows_per_step, len(rows)))
        for other in others:
            mix += other.items("train", OTHER_SKILL_ITEMS, seed=seed * 100_003 + step)
        ids, attention, labels = encode_answers(tokenizer, [(it.prompt, it.answer) for it in mix], device)
        model(input_ids=ids, attention_mask=attention, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % EVAL_EVERY == 0 or step == steps:
            model.eval()
            accuracy = skill_accuracy(model, tokenizer, eval_set, skill.verify, max_new_tokens=max_new_tokens)[0]
            curve.append((step, accuracy))
            if accuracy >= stop_at:
                break
    model.eval()
    return {"steps": step, "accuracy": accuracy, "curve": curve, "seconds": round(time.time() - started, 1)}
