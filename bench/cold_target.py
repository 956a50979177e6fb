"""Benchmark part: a sequence's cold-target update (`mul`), distilled again once per variant of the cold-target rule.

Why: `mul` is the update the champion cannot do at all. Its distillation runs the cold-target rule's steps with forward KL
on the student's own garbage samples, and its first steps pulled hardest on the arithmetic skills taught before
(seed 0 at step 20: add 93% -> 70%, sub 28% -> 16%). On seed 0 sub did not come all the way back and the update
was rejected. This reruns only that distillation, in the home where `bench.continual` ran the sequence, from the
same champion (the version before the `mul` update), the same accepted batch (rebuilt from the batch ledger) and
the same teacher (the teacher stage finds its registered teacher by key: nothing is retrained), so the only
difference between two rows is the variant. Distillation on one thread is deterministic: the row with the
sequence's own settings reproduces the sequence's result.

Each variant is evaluated against that champion by the gate's evaluation, and checked against the gate's policy
(`gates.promotion.policy_check`); nothing is promoted. The home's `candidate` alias moves, the champion does not.

    CONTINUAL_OPD_HOME=<its home> python -m bench.cold_target --sequence SEQ.json --out FILE.json [--variants a,b]
    python -m bench.cold_target --summarise FILE.json [FILE.json ...]

SEQ.json is a `bench.continual` result; its home must still exist. Runs on one thread.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from continual_opd import registry
from continual_opd.home import current_home, prepare_stores
from continual_opd.records import AcceptedBatch
from data_contracts import ledger
from demo_world.skills import CATALOGUE
from flows.continual_update import read_champion
from flows.params import load_params
from gates.promotion import policy_check
from tasks.distill import distill
from tasks.evaluate import evaluate
from tasks.teacher_rl import train_teacher

SKILL = "mul"
def _rule(**settings) -> dict:
    """A variant of the cold-target rule's settings (the rest of the rule stays the default's)."""
    return {"cold_target": {"settings": settings}}


VARIANTS: dict[str, dict] = {
    # each variant changes the product's defaults of the commit it runs at; the result files record their settings.
    # Levers measured and removed since (teacher-sampled rows, warm-up) are no longer variants: their results stay
    # in docs/bench/cold_target/ and docs/benchmark.md's appendix.
    "default": {},
    "replay_0.5": _rule(replay_fraction=0.5),
    "replay_0.625": _rule(replay_fraction=0.625),
    "replay_0.75": _rule(replay_fraction=0.75),
    "champion_scored": {"replay_teachers": "champion"},
    "lr_5e-4": {"learning_rate": 5e-4},
    "steps_600": _rule(steps=600, weight_decay=0.0),
    "steps_1200": _rule(steps=1200, weight_decay=0.0),
    "weight_decay_0.1": _rule(weight_decay=0.1),
    "weight_decay_1.0": _rule(weight_decay=1.0),
}


def accepted_batch(home, path: Path) -> AcceptedBatch:
    """The batch as the data contract accepted it in this home, from its ledger entry (a re-validation would
    refuse it as a duplicate, which it is)."""
    entry = ledger.last_for_skill(home, SKILL)
    if entry is None:
        raise SystemExit(f"no {SKILL} batch was accepted in {home.root}: run bench.continual there first")
    return AcceptedBatch(path=str(path), digest=entry["digest"], skill=entry["skill"], rows=int(entry["rows"]),
                         contract_version=str(entry["contract_version"]))


def run(sequence: dict, variants: list[str], out_path: Path) -> dict:
    """Each variant in turn; `out_path` is rewritten after each, so a stopped run keeps the variants it finished."""
    update = next((u for u in sequence["updates"] if u["skill"] == SKILL), None)
    if update is None or "teacher" not in update:
        raise SystemExit(f"the sequence has no {SKILL} update that reached distillation")
    home = current_home()
    if home.root.resolve() != Path(sequence["home"]).resolve():  # checked before anything is created in it
        raise SystemExit(f"run it in the sequence's home: CONTINUAL_OPD_HOME={sequence['home']} (this is {home.root})")
    home = prepare_stores(home)
    champion = read_champion(registry.STUDENT_MODEL, update["champion_before"])
    params = load_params(str(home.processed / update["batch"]), None, update["overrides"])
    batch = accepted_batch(home, Path(params.batch))
    teacher = train_teacher(batch, champion, params.teacher, CATALOGUE, home)
    if teacher.model.version != update["teacher"]["version"]:
        raise SystemExit(f"the teacher stage registered teacher v{teacher.model.version}, not the sequence's "
                         f"v{update['teacher']['version']}: the home or the code differs from the sequence's")
    check = policy_check(params.gate, CATALOGUE, SKILL, home, params.distill.registered_model)
    out = {"seed": sequence.get("seed", 0), "champion": champion.version,
           "teacher": {k: update["teacher"][k] for k in ("version", "initial_accuracy", "accuracy")},
           "variants": {}}
    for name in variants:
        cfg = params.distill.model_validate({**params.distill.model_dump(), **VARIANTS[name]})
        started = time.time()
        candidate = distill(batch, champion, teacher, cfg, CATALOGUE, home)
        report = evaluate(champion, candidate, SKILL, params.evaluation, CATALOGUE, home)
        passed, reasons = check(report.metrics())
        out["variants"][name] = {
            "settings": VARIANTS[name], "passes_gate_policy": passed, "reasons": list(reasons),
            "suites": {s: {"champion": r.champion_acc, "candidate": r.candidate_acc, "delta": r.delta,
                           "ci_low": r.delta_ci_low} for s, r in report.suites.items()},
            "kl_core": report.kl_core, "seconds": round(time.time() - started, 1)}
        print(f"bench.cold_target seed {out['seed']}: {name}: passes={passed} "
              f"{json.dumps(out['variants'][name]['suites'])}", flush=True)
        partial = out_path.with_name(out_path.name + ".partial")
        partial.write_text(json.dumps(out, indent=1, default=str))
        partial.replace(out_path)
    return out


def cold_target_markdown(results: list[dict]) -> str:
    """One row per variant and seed: mul gain and share of the teacher's gain, add and sub change (CI low)."""
    lines = ["| variant | seed | mul (share of teacher gain) | add change (CI low) | sub change (CI low) | "
             "gate policy |",
             "|---|---|---|---|---|---|"]
    for name in VARIANTS:
        for r in results:
            v = r["variants"].get(name)
            if v is None:
                continue
            mul, teacher = v["suites"][SKILL], r["teacher"]
            share = mul["delta"] / (teacher["accuracy"] - teacher["initial_accuracy"])
            kept = [f"{100 * v['suites'][s]['delta']:+.1f} ({100 * v['suites'][s]['ci_low']:+.1f})"
                    if s in v["suites"] else "-" for s in ("add", "sub")]
            lines.append(f"| {name} | {r['seed']} | {100 * mul['champion']:.1f} -> {100 * mul['candidate']:.1f} "
                         f"({share:.2f}) | {kept[0]} | {kept[1]} | "
                         f"{'passes' if v['passes_gate_policy'] else 'fails'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_target", description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", type=Path, help="a bench.continual result JSON whose home still exists")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="RESULT_JSON",
                        help="print the markdown table of earlier results (no training)")
    args = parser.parse_args(argv)
    if args.summarise:
        print(cold_target_markdown([json.loads(p.read_text()) for p in args.summarise]))
        return 0
    if args.sequence is None or args.out is None:
        parser.error("--sequence and --out are required (unless --summarise)")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    import torch

    torch.set_num_threads(1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run(json.loads(args.sequence.read_text()), args.variants.split(","), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
