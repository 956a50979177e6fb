"""Supervised signals on reference answers: batches with the loss on the answer and EOS only, and the NLL a model
gives the answers.

The teacher stage's warm start trains on them, and distillation's step-0 guard asks how well the teacher knows the
answers it is about to teach (`answer_nll`). Prompts are rendered as every stage renders them
(`continual_opd.prompts`), so a chat model sees its template here too.
"""

from collections.abc import Sequence

from continual_opd.prompts import add_special_tokens, as_text


def encode_answers(tokenizer, pairs: Sequence[tuple[str, str]], device):
    """Right-padded (input_ids, attention_mask, labels) of prompt + answer + EOS; labels only on answer and EOS."""
    import torch

    special = add_special_tokens(tokenizer)
    ids, labels = [], []
    for text, (_, answer) in zip(as_text(tokenizer, [p for p, _ in pairs]), pairs, strict=True):
        prompt = tokenizer(text, add_special_tokens=special)["input_ids"]
        target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    return (torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device),
            torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device),
            torch.tensor([y + [-100] * (width - len(y)) for y in labels], device=device))


def answer_nll(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 256) -> float:
    """Mean per-token negative log-likelihood (nats) the model gives the reference answers + EOS of the pairs."""
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                ids, attention, labels = encode_answers(tokenizer, pairs[start:start + batch_size], device)
                logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
                target = labels[:, 1:]
                keep = target != -100
                nll = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
                total, count = total + float(nll), count + int(keep.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)
