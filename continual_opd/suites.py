"""The evaluation suites: one per skill, drawn from its held-out split, identical for every model compared.

The gate, the data contract's contamination check and the benchmark all call `build_suites`, so "the
items the gate uses" has one definition. The default size certifies the gate's default margins: with
about 540 items and no change at all, the paired 95% lower bound of the delta is already near -2 points,
so a 2-point margin would fail on noise; at 1,000 items it does not (gates/default_policy.yaml).
"""

from collections.abc import Sequence

from continual_opd.skills import Catalogue, Item

DEFAULT_SUITE_SIZE = 1000
SUITE_SEED = 20261124


def suite_names(catalogue: Catalogue, target_skill: str, taught: Sequence[str] = ()) -> list[str]:
    """The target skill's suite first, then every core suite, then each of `taught` (skills taught by earlier
    updates) not already named: the suites of an update's gate, of its selection split and of its training curve."""
    names = [target_skill, *[c for c in catalogue.core if c != target_skill]]
    return [*names, *[t for t in dict.fromkeys(taught) if t not in names]]


def build_suites(catalogue: Catalogue, names: list[str], size: int = DEFAULT_SUITE_SIZE, seed: int = SUITE_SEED,
                 sizes: dict[str, int] | None = None) -> dict[str, list[Item]]:
    """Held-out items per suite; a skill with fewer held-out prompts than asked gets all it has."""
    return {name: catalogue[name].items("heldout", (sizes or {}).get(name, size), seed=seed) for name in names}


def all_suite_items(catalogue: Catalogue, size: int = DEFAULT_SUITE_SIZE) -> list[Item]:
    """Every item any gate of this catalogue would evaluate: every target's and every core skill's suite."""
    names = list(dict.fromkeys([*catalogue.targets, *catalogue.core]))
    return [it for items in build_suites(catalogue, names, size).values() for it in items]


SELECTION_SEED = 31337


def selection_suites(catalogue: Catalogue, names: list[str], size: int, gate_size: int,
                     trained: set[str] = frozenset(), seed: int = SELECTION_SEED) -> dict[str, list[Item]]:
    """Items for choosing between candidates without looking at the gate's items: per suite, up to `size` held-out
    items outside the gate's suite of `gate_size` items (`build_suites`). A skill whose held-out split the gate
    takes whole (the demo's sub and mul) gets train-split items instead, minus the prompts this update `trained`
    on. Choosing on the gate's own items would bias the gate; these never are (tests/test_selection.py)."""
    gate = build_suites(catalogue, names, gate_size)
    out = {}
    for name in names:
        taken = {it.id for it in gate[name]}
        spare = [it for it in catalogue[name].items("heldout", size + len(taken), seed=seed) if it.id not in taken]
        if len(spare) < size:
            spare += [it for it in catalogue[name].items("train", size + len(trained), seed=seed)
                      if it.prompt not in trained][:size - len(spare)]
        out[name] = spare[:size]
    return out
