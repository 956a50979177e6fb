"""Distribution shift: a batch's row features compared with the last accepted batch of the same skill.

The features are categorical and tokenizer-free, so a profile can be recomputed from any accepted
file and stored in the ledger as small GX partition objects: the prompt's *shape* (digits -> 9,
lower-case -> a, upper-case -> A, so "12+34=" and "56+78=" share the shape "99+99="), and the prompt
and answer lengths in characters. `batch_shift.json` asserts KL(batch || reference) below the
threshold with GX's `expect_column_kl_divergence_to_be_less_than`; values never seen in the reference
get a small tail weight (1%) instead of an infinite divergence.
"""

from collections import Counter

SHIFT_FEATURES = ("prompt_shape", "prompt_chars", "answer_chars")


def shape(text: str) -> str:
    return "".join("9" if c.isdigit() else "a" if c.islower() else "A" if c.isupper() else
                   "_" if c.isspace() else c for c in text)


def features(prompt: str | None, answer: str | None) -> dict:
    """The shift features of one row (None where the text is missing)."""
    return {"prompt_shape": None if prompt is None else shape(prompt),
            "prompt_chars": None if prompt is None else len(prompt),
            "answer_chars": None if answer is None else len(answer)}


def partition(values) -> dict:
    """A GX categorical partition object {"values", "weights"} of the non-null values."""
    counts = Counter(v for v in values if v is not None)
    total = sum(counts.values())
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return {"values": [v for v, _ in ordered], "weights": [c / total for _, c in ordered]}


def profile(prompts, answers) -> dict:
    """Partition objects of every shift feature, for the ledger."""
    rows = [features(p, a) for p, a in zip(prompts, answers)]
    return {name: partition(r[name] for r in rows) for name in SHIFT_FEATURES}


def shift_parameters(reference: dict, threshold: float) -> dict:
    """The $PARAMETER values of batch_shift.json for one reference profile."""
    return {"shift_threshold": float(threshold), **{f"reference_{name}": reference[name] for name in SHIFT_FEATURES}}
