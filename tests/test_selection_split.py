"""Choosing a candidate never looks at the gate's items: the selection split is disjoint from every gate suite."""

from continual_opd.suites import all_suite_items, build_suites, selection_suites
from demo_world.skills import CATALOGUE


def test_selection_items_are_disjoint_from_the_gate_and_from_the_batch():
    names = ["sub", *CATALOGUE.core, "add", "mul"]
    gate_size = 1000
    trained = {it.prompt for it in CATALOGUE["sub"].items("train", 2048, seed=7)}  # the update's batch
    selection = selection_suites(CATALOGUE, names, 300, gate_size, trained=trained)
    gate = build_suites(CATALOGUE, names, gate_size)
    every_gate_prompt = {it.prompt for it in all_suite_items(CATALOGUE, gate_size)}
    for name in names:
        chosen = selection[name]
        assert len(chosen) >= 100, f"{name}: too few selection items to choose with ({len(chosen)})"
        assert len({it.id for it in chosen}) == len(chosen)
        assert not {it.id for it in chosen} & {it.id for it in gate[name]}, f"{name}: selection overlaps the gate"
        assert not {it.prompt for it in chosen} & every_gate_prompt, f"{name}: a prompt some gate evaluates"
        assert not {it.prompt for it in chosen} & trained, f"{name}: a prompt the update trains on"
    # sub and mul: the gate takes every held-out prompt, so selection falls back to train prompts not trained on
    assert len(gate["mul"]) == len(CATALOGUE["mul"].items("heldout", 10_000))
    assert selection["mul"] and all(it.prompt not in every_gate_prompt for it in selection["mul"])
