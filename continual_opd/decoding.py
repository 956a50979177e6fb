"""Batched greedy decoding and per-skill accuracy: the one way every stage reads a model's answers.

Bootstrap early stopping, the teacher gate, distillation's held-out curves and the forgetting suite
all call `greedy_complete`, so a number in one stage means the same thing in every other.
"""

from collections.abc import Callable, Sequence

from continual_opd.prompts import add_special_tokens, as_text

ANSWER_TOKENS = 8  # completion length when reading answers; stages use at least this, so their numbers agree


def answer_tokens(max_completion_length: int) -> int:
    """Tokens to decode when scoring a stage that samples up to `max_completion_length` tokens."""
    return max(ANSWER_TOKENS, max_completion_length)


def greedy_complete(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = ANSWER_TOKENS,
                    batch_size: int = 512, sample: bool = False, temperature: float = 1.0,
                    seed: int | None = None, on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Complete each prompt (greedy unless `sample`), stopping at EOS; returns the decoded completions.

    `on_batch(n)` is called after each batch with the number of prompts it completed (progress reporting).
    """
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    texts = as_text(tokenizer, prompts)
    outputs: list[str] = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                chunk = texts[start:start + batch_size]
                enc = tokenizer(chunk, return_tensors="pt", padding=True,
                                add_special_tokens=add_special_tokens(tokenizer))
                enc = {k: v.to(model.device) for k, v in enc.items()}
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=sample,
                    temperature=temperature if sample else None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                new = gen[:, enc["input_ids"].shape[1]:]
                outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
                if on_batch is not None:
                    on_batch(len(chunk))
    finally:
        model.train(was_training)
    return outputs


def skill_accuracy(model, tokenizer, items, verify, max_new_tokens: int = ANSWER_TOKENS) -> tuple[float, list[str]]:
    """Fraction of `items` whose greedy completion passes `verify(output, answer)`, and the outputs."""
    outputs = greedy_complete(model, tokenizer, [it.prompt for it in items], max_new_tokens=max_new_tokens)
    correct = sum(bool(verify(o, it.answer)) for o, it in zip(outputs, items, strict=True))
    return correct / max(len(items), 1), outputs
