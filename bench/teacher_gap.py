"""Benchmark check: where a student's gain falls short of its teacher's, both models on identical items.

Why: `bench.continual` measures a teacher's gain on the teacher stage's gate set (for `mul`, 64 of its 192 held-out
prompts) and the student's on the gate's target suite, and the share of the teacher's gain compares the two. On 64
items a teacher's accuracy has a standard error near 6 points, so a share short of 80% could be the teacher's
measurement rather than the student's shortfall. This scores each update's registered teacher and the candidate
it taught (the champion after a promoted update) with the gate's decoder and verifier on

- the gate's target suite: the paired share of the teacher's gain. The teacher's checkpoint was chosen on its
  selection set, which for `mul` lies inside this suite (the suite takes every held-out prompt); that flatters the
  teacher here, never the student, so the paired share errs low;
- the batch's own prompts, which both were trained on: how closely the student copies its teacher where it was
  taught (answer agreement), against how closely it does on prompts neither saw.

    CONTINUAL_OPD_HOME=<the sequence's home> python -m bench.teacher_gap SEQ.json [--out FILE.json]
    python -m bench.teacher_gap --summarise FILE.json [FILE.json ...]

SEQ.json is a `bench.continual` result; its home must still exist. Nothing is trained or registered.
"""

import argparse
import json
import sys
from pathlib import Path

from continual_opd import registry
from continual_opd.batch_io import load_batch
from continual_opd.decoding import skill_accuracy
from continual_opd.home import current_home, prepare_stores
from continual_opd.modelio import load_model
from continual_opd.suites import build_suites
from demo_world.skills import CATALOGUE
from flows.params import load_params
from tasks.evaluate import EvalConfig


def _answers(version, item_sets, skill: str, cfg: EvalConfig) -> list[tuple[float, list[str]]]:
    """One registered model, loaded once: (accuracy, greedy answers) on each item set, as the gate decodes."""
    model, tokenizer = load_model(registry.local_folder(version), frozen=True)
    return [skill_accuracy(model, tokenizer, items, CATALOGUE[skill].verify, cfg.max_new_tokens) for items in item_sets]


def _scores(teacher: tuple[float, list[str]], student: tuple[float, list[str]], items) -> dict:
    agree = sum(a == b for a, b in zip(teacher[1], student[1], strict=True))
    return {"items": len(items), "teacher": teacher[0], "student": student[0], "agreement": agree / len(items)}


def teacher_gap(update: dict, batch_items, cfg: EvalConfig) -> dict:
    """One promoted update: teacher and student on the gate's target suite and on the batch's prompts."""
    skill = update["skill"]
    suite_items = build_suites(CATALOGUE, [skill], cfg.suite_size)[skill]
    sets = [suite_items, batch_items]
    teacher = _answers(registry.get_version(registry.TEACHER_MODEL, update["teacher"]["version"]), sets, skill, cfg)
    student = _answers(registry.get_version(registry.STUDENT_MODEL, update["champion_after"]), sets, skill, cfg)
    suite, batch = (_scores(t, s, items) for t, s, items in zip(teacher, student, sets, strict=True))
    recorded = update["suites"][skill]
    if abs(recorded["candidate"] - suite["student"]) > 1e-9:
        raise SystemExit(f"the {skill} student scores {suite['student']:.4f} here but {recorded['candidate']:.4f} in "
                         "the sequence's result: the home or the code differs from the sequence's")
    champion, gain = recorded["champion"], suite["student"] - recorded["champion"]
    recorded_gain = update["teacher"]["accuracy"] - update["teacher"]["initial_accuracy"]
    return {"skill": skill, "champion": champion, "suite": suite, "batch": batch,
            "teacher_gate_set": update["teacher"]["accuracy"],
            "share_paired": gain / (suite["teacher"] - champion) if suite["teacher"] > champion else None,
            "share_recorded": gain / recorded_gain if recorded_gain > 0 else None}


def run(sequence: dict) -> dict:
    home = current_home()
    if home.root.resolve() != Path(sequence["home"]).resolve():
        raise SystemExit(f"run it in the sequence's home: CONTINUAL_OPD_HOME={sequence['home']} (this is {home.root})")
    home = prepare_stores(home)
    rows = []
    for update in sequence["updates"]:
        if update["outcome"] != "promoted" or "teacher" not in update:
            continue
        batch = home.processed / update["batch"]
        cfg = load_params(str(batch), None, update["overrides"]).evaluation
        rows.append(teacher_gap(update, load_batch(batch), cfg))
    return {"seed": sequence.get("seed", 0), "home": sequence["home"], "updates": rows}


def markdown(results: list[dict]) -> str:
    lines = ["| seed | skill | gate suite: champion -> student (teacher; on its gate set) | share, paired (recorded) "
             "| answers agreeing, suite | batch prompts: teacher, student, answers agreeing |",
             "|---|---|---|---|---:|---|"]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    share = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    for r in results:
        for u in r["updates"]:
            s, b = u["suite"], u["batch"]
            lines.append(f"| {r['seed']} | {u['skill']} | {pct(u['champion'])} -> {pct(s['student'])} "
                         f"({pct(s['teacher'])}; {pct(u['teacher_gate_set'])}) | {share(u['share_paired'])} "
                         f"({share(u['share_recorded'])}) | {pct(s['agreement'])} | {pct(b['teacher'])}, "
                         f"{pct(b['student'])}, {pct(b['agreement'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.teacher_gap", description=__doc__.splitlines()[0])
    parser.add_argument("sequence", type=Path, nargs="?", help="a bench.continual result JSON whose home still exists")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="RESULT_JSON", help="render earlier results")
    args = parser.parse_args(argv)
    if args.summarise:
        print(markdown([json.loads(p.read_text()) for p in args.summarise]))
        return 0
    if args.sequence is None:
        parser.error("give a bench.continual result JSON (or --summarise)")
    import torch

    torch.set_num_threads(1)
    result = run(json.loads(args.sequence.read_text()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(markdown([result]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
