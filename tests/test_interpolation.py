"""A safe update size: the interpolation arithmetic, and choosing the largest alpha that passes the policy."""

import pytest

from demo_world.skills import CATALOGUE


def _state(**tensors):
    import torch

    return {name: torch.tensor(value) for name, value in tensors.items()}


def test_interpolation_is_champion_plus_alpha_times_the_update():
    import torch

    from tasks.interpolation import interpolate

    champion = _state(w=[[1.0, -2.0], [0.5, 4.0]], b=[0.0, 1.0], steps=[3])
    student = _state(w=[[3.0, 2.0], [0.5, 0.0]], b=[1.0, -1.0], steps=[7])
    assert torch.equal(interpolate(champion, student, 1.0)["w"], student["w"])
    assert torch.equal(interpolate(champion, student, 0.0)["w"], champion["w"])
    quarter = interpolate(champion, student, 0.25)
    torch.testing.assert_close(quarter["w"], torch.tensor([[1.5, -1.0], [0.5, 3.0]]))
    torch.testing.assert_close(quarter["b"], torch.tensor([0.25, 0.5]))
    assert torch.equal(quarter["steps"], student["steps"]), "integer buffers are the student's, never blended"
    half = interpolate(champion, student, 0.5)
    torch.testing.assert_close(half["w"], (champion["w"] + student["w"]) / 2)  # the midpoint, exactly
    with pytest.raises(ValueError, match="same architecture"):
        interpolate(champion, {"w": student["w"]}, 0.5)


def test_the_largest_alpha_whose_selection_results_pass_is_chosen():
    import torch

    from demo_world.model import build_tiny_model
    from demo_world.tokenizer import build_tokenizer
    from tasks.interpolation import interpolate, select_alpha

    torch.set_num_threads(1)
    tok = build_tokenizer()
    champion, student = build_tiny_model(tok, seed=0), build_tiny_model(tok, seed=1)
    champion_state = {k: v.clone() for k, v in champion.state_dict().items()}
    student_state = {k: v.clone() for k, v in student.state_dict().items()}
    suites = {"add": CATALOGUE["add"].items("heldout", 6, seed=1), "copy": CATALOGUE["copy"].items("heldout", 6)}
    seen = []

    def accept(metrics):  # the policy as the flow passes it; this one fails the first two tries
        seen.append(dict(metrics))
        return len(seen) == 3, () if len(seen) == 3 else ("suite add regressed",)

    model, alpha, trials = select_alpha(student, champion, tok, [0.25, 1.0, 0.5, 0.75], suites, CATALOGUE, accept)
    assert [t["alpha"] for t in trials] == [1.0, 0.75, 0.5], "largest first, stopping at the first that passes"
    assert alpha == 0.5 and [t["passed"] for t in trials] == [False, False, True]
    assert {"add/delta_ci_low", "copy/delta_ci_low", "drift/kl_core"} <= set(seen[0]), "the gate's own metrics"
    expected = interpolate(champion_state, student_state, 0.5)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name])
    for name, tensor in student.state_dict().items():  # the trained student itself is left as it was
        assert torch.equal(tensor, student_state[name])

    never = select_alpha(student, champion, tok, [1.0, 0.5], suites, CATALOGUE, lambda m: (False, ("no",)))
    assert never[1] == 1.0 and never[0] is student, "nothing passes: the trained student goes to the gate as is"
