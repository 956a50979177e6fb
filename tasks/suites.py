"""The evaluation suites: one per skill, drawn from its held-out split, identical for every model compared.

The gate, the data contract's contamination check and the benchmark all call `build_suites`, so "the
items the gate uses" is one definition. Sizes default to what certifies the gate's default margins
(FACTS.md: with ~540 items and no change the paired 95% lower bound is about -2 points).
"""

from continual_opd.skills import CORE_SKILLS, SKILLS, Item

DEFAULT_SUITE_SIZE = 1000
SUITE_SEED = 20261124


def suite_names(target_skill: str) -> list[str]:
    """The target skill's suite first, then every core suite."""
    return [target_skill, *[c for c in CORE_SKILLS if c != target_skill]]


def build_suites(names: list[str], size: int = DEFAULT_SUITE_SIZE, seed: int = SUITE_SEED,
                 sizes: dict[str, int] | None = None) -> dict[str, list[Item]]:
    """Held-out items per suite; a skill with fewer held-out prompts than asked gets all it has."""
    return {name: items_up_to(name, "heldout", (sizes or {}).get(name, size), seed) for name in names}


def items_up_to(name: str, split: str, n: int, seed: int) -> list[Item]:
    """`n` distinct items of a split, or fewer (a quarter, a sixteenth...) when the split has fewer prompts."""
    while True:  # a skill with few prompts (mul) may need more than one step down
        try:
            return SKILLS[name].items(split, n, seed=seed)
        except ValueError:
            if n < 4:
                raise
            n //= 4


def all_suite_items(target_skills=None, size: int = DEFAULT_SUITE_SIZE) -> list[Item]:
    """Every item any gate of these target skills would evaluate (for contamination checks)."""
    targets = target_skills or [s for s in SKILLS if SKILLS[s].role == "target"]
    names = list(dict.fromkeys([*targets, *CORE_SKILLS]))
    return [it for items in build_suites(names, size).values() for it in items]
