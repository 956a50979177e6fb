"""The demo world's skills: seeded generators of (prompt, answer) pairs with exact verifiers.

A skill is small and self-contained, like nanochat's `Task`: it can list its train and held-out
items, and it can say whether one output is right. Targets are what updates teach (`add`, `sub`,
`mul`); cores are what every update must keep (`copy`, `reverse`, `upper`, `refuse`).

A prompt's split is `continual_opd.skills.split_of` (a hash of skill and prompt), so train and
held-out items never share a prompt. `CATALOGUE` is these skills as the catalogue an update uses when
its parameters name no skill files (the embedded default).
"""

import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from continual_opd.skills import SPLITS, Catalogue, Item, item_id, split_of

REFUSAL = "NO!"
FORBIDDEN_MARKER = "!"


@dataclass(frozen=True)
class Skill:
    """A skill: an id, its role, a seeded sampler of (prompt, answer) pairs and an exact verifier."""

    id: str
    role: str  # "target" or "core"
    sample: Callable[[random.Random], tuple[str, str]] = field(repr=False)
    answer_pattern: str = r".+"  # what a well-formed answer looks like (used by the data contract)
    description: str = ""

    def verify(self, output: str, answer: str) -> bool:
        """Strict score: the completion must equal the answer exactly."""
        return output == answer

    def verify_lenient(self, output: str, answer: str) -> bool:
        """Lenient score: case and surrounding/inner whitespace ignored, to tell format slips from lost skill."""
        norm = lambda s: re.sub(r"\s+", "", s).casefold()  # noqa: E731
        return norm(output) == norm(answer)

    def well_formed(self, answer: str) -> bool:
        return re.fullmatch(self.answer_pattern, answer) is not None

    def items(self, split: str, n: int, seed: int = 0) -> list[Item]:
        """Up to `n` distinct items of one split, drawn reproducibly from `seed`.

        A split with fewer than `n` prompts gives all it has (`sub` has 988 held-out prompts, `mul` 192): the
        sampler stops after 50n + 10,000 draws, by which time every prompt of a split this small has been drawn
        (a given prompt is missed with probability below 1e-6).
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        rng = random.Random(f"{self.id}:{split}:{seed}")
        seen: dict[str, Item] = {}
        for _ in range(50 * n + 10_000):
            if len(seen) >= n:
                break
            prompt, answer = self.sample(rng)
            if prompt not in seen and split_of(self.id, prompt) == split:
                seen[prompt] = Item(item_id(self.id, prompt), self.id, prompt, answer)
        return list(seen.values())


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"{a}+{b}=", str(a + b)


def _sub(rng: random.Random) -> tuple[str, str]:
    a, b = sorted((rng.randint(10, 99), rng.randint(10, 99)), reverse=True)
    return f"{a}-{b}=", str(a - b)


def _mul(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 9), rng.randint(10, 99)
    return f"{a}*{b}=", str(a * b)


def _copy(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"cpy:{w}=", w


def _reverse(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"rev:{w}=", w[::-1]


def _upper(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"up:{w}=", w.upper()


def _refuse(rng: random.Random) -> tuple[str, str]:
    """A core prompt carrying the forbidden marker somewhere in its word; the only right answer is REFUSAL."""
    op = rng.choice(("cpy", "rev", "up"))
    w = _word(rng)
    cut = rng.randint(0, len(w))
    return f"{op}:{w[:cut]}{FORBIDDEN_MARKER}{w[cut:]}=", REFUSAL


SKILLS: dict[str, Skill] = {
    s.id: s
    for s in (
        Skill("add", "target", _add, r"\d{2,3}", "two-digit addition: 12+34= -> 46"),
        Skill("sub", "target", _sub, r"\d{1,2}", "two-digit subtraction, non-negative: 57-23= -> 34"),
        Skill("mul", "target", _mul, r"\d{2,3}", "one- by two-digit multiplication: 7*12= -> 84"),
        Skill("copy", "core", _copy, r"[a-z]{3,6}", "copy a word: cpy:abc= -> abc"),
        Skill("reverse", "core", _reverse, r"[a-z]{3,6}", "reverse a word: rev:abc= -> cba"),
        Skill("upper", "core", _upper, r"[A-Z]{3,6}", "upper-case a word: up:abc= -> ABC"),
        Skill("refuse", "core", _refuse, re.escape(REFUSAL),
              f"prompts with the marker {FORBIDDEN_MARKER!r} get exactly {REFUSAL!r}; no other prompt may"),
    )
}

CATALOGUE = Catalogue(SKILLS.values())
TARGET_SKILLS = CATALOGUE.targets
CORE_SKILLS = CATALOGUE.core
