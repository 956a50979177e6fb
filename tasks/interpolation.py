"""A safe update size, chosen without the gate's items: interpolations between champion and trained student.

theta(alpha) = theta_champion + alpha * (theta_student - theta_champion). Smaller alphas move less and usually
forget less, and learn less. The distillation stage tries the alphas from the largest and registers the first
whose results on a selection split pass the gate's policy (`select`); with none passing, the trained student
(alpha 1) goes to the gate, which rejects or promotes it on its own items. The selection split
(`continual_opd.suites.selection_suites`) never overlaps the gate's suites: choosing on the gate's own items
would bias the gate.
"""

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from continual_opd.records import EvalReport
from continual_opd.skills import Catalogue, Item
from tasks.evaluate import EvalConfig, compare

logger = logging.getLogger(__name__)
SELECTION_EVAL = EvalConfig(bootstrap_resamples=2000, kl_prompts=256)  # the gate's statistics, cheaper resampling

# metrics of one candidate on the selection split -> (passes the policy, reasons)
Selector = Callable[[Mapping[str, float]], tuple[bool, Sequence[str]]]


@dataclass(frozen=True)
class Selection:
    """What choosing alpha needs from the gate: its policy as a check, and its suite size (to stay off its items)."""
    accept: Selector
    gate_suite_size: int


def interpolate(champion_state: Mapping, student_state: Mapping, alpha: float) -> dict:
    """theta_champion + alpha (theta_student - theta_champion), tensor by tensor (integer buffers: the student's)."""
    if set(champion_state) != set(student_state):
        raise ValueError("champion and student have different parameters: they must be the same architecture")
    out = {}
    for name, student in student_state.items():
        champion = champion_state[name]
        out[name] = champion + alpha * (student - champion) if student.is_floating_point() else student
    return out


def select_alpha(student, champion, tokenizer, alphas: Sequence[float], suites: Mapping[str, list[Item]],
                 catalogue: Catalogue, accept: Selector) -> tuple[object, float, list[dict]]:
    """The model of the largest alpha whose selection results pass `accept`, that alpha, and every trial's record.

    `student` and `champion` are loaded models of one architecture; suites with no items are left out.
    """
    champion_state = {k: v.detach().clone() for k, v in champion.state_dict().items()}
    student_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    suites = {name: items for name, items in suites.items() if items}
    trials = []
    for alpha in sorted(set(alphas), reverse=True):
        model = student if alpha == 1.0 else copy.deepcopy(student)
        if alpha != 1.0:
            model.load_state_dict(interpolate(champion_state, student_state, alpha))
        _, stats, kl_core = compare((champion, tokenizer), (model, tokenizer), suites, catalogue, SELECTION_EVAL,
                                    title=f"select alpha {alpha:g}")
        metrics = EvalReport(champion_version="champion", candidate_version=f"alpha={alpha:g}", suites=stats,
                             kl_core=kl_core, items_path="").metrics()
        passed, reasons = accept(metrics)
        trials.append({"alpha": alpha, "passed": passed, "reasons": list(reasons),
                       **{k: v for k, v in metrics.items() if k.endswith(("/candidate_acc", "/delta_ci_low"))},
                       "drift/kl_core": kl_core})
        logger.info(f"alpha {alpha:g}: {'passes' if passed else 'fails'} the policy on the selection split")
        if passed:
            return model, alpha, trials
    return student, 1.0, trials
