"""What a person reads when an update ends (the decision, per-skill accuracies, where to look next), and its exit code.

Exit codes of `run` and `demo`: 0 promoted, 1 error, 2 data contract failed, 3 rejected by the gate,
4 teacher gate failed, 5 skipped (the batch's rows were already trained on: nothing ran, nothing changed).
"""

import sys

from continual_opd.records import SkippedBatch, UpdateOutcome
from tasks.teacher_rl import TeacherGateFailed
from tasks.validate import ContractViolation

EXIT_PROMOTED, EXIT_ERROR, EXIT_CONTRACT, EXIT_REJECTED, EXIT_TEACHER_GATE, EXIT_SKIPPED = 0, 1, 2, 3, 4, 5

WHERE_TO_LOOK = """Where to look next:
  MLflow UI (runs, lineage tags, registry):  continual-opd mlflow-ui   then open http://127.0.0.1:5000
  Prefect UI (flow runs, artifacts):         continual-opd serve       then open http://127.0.0.1:4200
  Champion and decisions:                    continual-opd status ; continual-opd history"""


def outcome_table(outcome) -> str:
    report, decision = outcome.report, outcome.decision
    rows = [f"{'skill':<10} {'champion v' + report.champion_version:>14} {'candidate v' + report.candidate_version:>15}"
            f" {'delta':>7} {'95% CI':>17}"]
    for name, s in report.suites.items():
        rows.append(f"{name:<10} {s.champion_acc:>14.3f} {s.candidate_acc:>15.3f} {s.delta:>+7.3f} "
                    f"[{s.delta_ci_low:+.3f},{s.delta_ci_high:+.3f}]")
    rows.append(f"drift/kl_core = {report.kl_core:.4f}")
    verdict = "PROMOTED: champion -> v" + report.candidate_version if decision.promoted else \
        "REJECTED: champion stays v" + report.champion_version
    return "\n".join([*rows, "", f"decision: {verdict}", *[f"  - {r}" for r in decision.reasons]])


def print_outcome(params, state, result) -> int:
    """Print the outcome of a flow run and return the exit code it maps to."""
    if isinstance(result, UpdateOutcome):
        print()
        print(f"continual update of {params.student_model} on {params.batch}")
        print(f"teacher v{result.teacher.model.version}: {result.batch.skill} held-out "
              f"{result.teacher.initial_accuracy:.3f} -> {result.teacher.accuracy:.3f}"
              + (" (reused)" if result.teacher.reused else ""))
        print(outcome_table(result))
        print()
        print(WHERE_TO_LOOK)
        return EXIT_PROMOTED if result.decision.promoted else EXIT_REJECTED
    if isinstance(result, SkippedBatch):
        print(f"skipped: {result.reason}")
        return EXIT_SKIPPED
    if isinstance(result, ContractViolation):
        print(f"data contract failed:\n{result}", file=sys.stderr)
        return EXIT_CONTRACT
    if isinstance(result, TeacherGateFailed):
        print(f"teacher gate failed: {result}", file=sys.stderr)
        return EXIT_TEACHER_GATE
    message = result if isinstance(result, BaseException) else getattr(state, "message", state)
    print(f"error: update failed: {message}", file=sys.stderr)
    return EXIT_ERROR
