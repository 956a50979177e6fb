"""The held-out items of a skill, in two parts that never meet: the selection part and the gate part.

A skill's held-out split (`continual_opd.skills.split_of`) is cut once more, by a second hash of (skill, prompt):
- the **selection part** (`SELECTION_FRACTION` of the held-out prompts) is for every choice made inside an
  update: the teacher's best checkpoint and early stopping, the warm-start stop, every rule's measurement (the
  cold target), the distillation curve (`selection_suites`);
- the **gate part** (the rest) is for decisions only: the forgetting suite the gate reads, and the teacher gate
  (`build_suites`).

Because the part of a prompt is a pure function of its skill and text, no draw, size or seed can put one item in
both: a choice inside an update can never read an item that judges it (tests/test_selection_split.py). This
holds for generated skills and for file skills alike. A small skill gets a small selection part rather than
borrowing the gate's items: the demo's `mul` has 192 held-out prompts, 45 for choosing and 147 for the gate.

The default gate suite size certifies the gate's default margins: with about 540 items and no change at all, the
paired 95% lower bound of the delta is already near -2 points, so a 2-point margin would fail on noise; at 1,000
items it does not (gates/default_policy.yaml). A skill whose gate part is smaller gets all of it.
"""

import hashlib
import math
from functools import lru_cache
from collections.abc import Sequence

from continual_opd.skills import Catalogue, Item

DEFAULT_SUITE_SIZE = 1000
SUITE_SEED = 20261124
SELECTION_SEED = 31337
SELECTION_FRACTION = 0.25  # of the held-out prompts
PARTS = ("selection", "gate")


def part_of(skill_id: str, prompt: str) -> str:
    """`selection` or `gate`: the part of a held-out prompt, by a hash of (skill, prompt) salted apart from the
    train/held-out hash so the two cuts are independent."""
    digest = hashlib.sha256(f"part\x00{skill_id}\x00{prompt}".encode()).digest()
    return "selection" if int.from_bytes(digest[:4], "big") / 2**32 < SELECTION_FRACTION else "gate"


def part_items(skill, part: str, n: int, seed: int) -> list[Item]:
    """Up to `n` held-out items of `skill` in `part`, in the order the skill draws them from `seed`.

    Skills draw prefix-stably (the first k items of a larger draw are the draw of k), so this asks for more held-out
    items until it has `n` of the part or the split runs out. Cached per process: a small skill's split is drawn to
    exhaustion, which costs about a second, and the gate, the contract and the curves ask for the same items."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; use one of {PARTS}")
    return list(_part_items(skill, part, n, seed))


@lru_cache(maxsize=512)
def _part_items(skill, part: str, n: int, seed: int) -> tuple[Item, ...]:
    share = SELECTION_FRACTION if part == "selection" else 1 - SELECTION_FRACTION
    asked = math.ceil(n / share * 1.2) + 20
    while True:
        drawn = skill.items("heldout", asked, seed=seed)
        kept = [it for it in drawn if part_of(skill.id, it.prompt) == part]
        if len(kept) >= n or len(drawn) < asked:
            return tuple(kept[:n])
        asked *= 2


def suite_names(catalogue: Catalogue, target_skill: str, taught: Sequence[str] = ()) -> list[str]:
    """The target skill's suite first, then every core suite, then each of `taught` (skills taught by earlier
    updates) not already named: the suites of an update's gate, of its selection part and of its training curve."""
    names = [target_skill, *[c for c in catalogue.core if c != target_skill]]
    return [*names, *[t for t in dict.fromkeys(taught) if t not in names]]


def build_suites(catalogue: Catalogue, names: list[str], size: int = DEFAULT_SUITE_SIZE, seed: int = SUITE_SEED,
                 sizes: dict[str, int] | None = None) -> dict[str, list[Item]]:
    """The gate's suites: per skill, up to `size` items of the gate part (all of it for a skill with fewer)."""
    return {name: part_items(catalogue[name], "gate", (sizes or {}).get(name, size), seed) for name in names}


def selection_suites(catalogue: Catalogue, names: list[str], size: int, trained: set[str] = frozenset(),
                     seed: int = SELECTION_SEED) -> dict[str, list[Item]]:
    """Items for the choices inside an update: per skill, up to `size` items of the selection part, minus the
    prompts this update `trained` on (a batch should hold none: the data contract refuses held-out prompts)."""
    return {name: [it for it in part_items(catalogue[name], "selection", size + len(trained), seed)
                   if it.prompt not in trained][:size] for name in names}


def all_suite_items(catalogue: Catalogue, size: int = DEFAULT_SUITE_SIZE) -> list[Item]:
    """Every held-out item an update of this catalogue reads, gate and selection parts, for every target and core
    skill: what the data contract keeps out of training batches."""
    names = list(dict.fromkeys([*catalogue.targets, *catalogue.core]))
    gate = build_suites(catalogue, names, size)
    chosen = selection_suites(catalogue, names, size)
    return [it for name in names for it in (*gate[name], *chosen[name])]
