"""Benchmark part: a continual sequence of three updates through the real flow (`add`, `sub`, then `mul`).

Why: one update shows the gate works; a sequence shows what a user of scheduled updates cares about,
whether skills taught earlier survive the later updates. This runs three updates on a fresh home the way
`continual-opd run` does (the same parameter loading, the same flow) and reports the home's accuracy
matrix with GEM's ACC and BWT (`gates.accuracy_matrix`, filled in by the evaluate and gate stages).

The third skill, `mul`, is one the pretrained base cannot do at all (0.0 greedy and sampled). The sequence
runs it with the flow's defaults like the others: the product's rules handle a target the initial model cannot do
(`continual_opd.rules`: the teacher stage's `warm_start` and distillation's `cold_target`, measured on the target's
selection items and the batch's prompts). No update gets an override; an update that is rejected or stopped is
reported as such, never retried. `--seed` seeds the teacher and distillation of every update alike.

The acceptance numbers of the sequence (`acceptance`): every update promoted; after the last update, each
earlier-taught skill within 2 points of its accuracy when it was taught; each update's gain on its target at
least 80% of its own teacher's gain (teacher gain measured on the teacher stage's gate set, student gain on the
gate's suite).

    CONTINUAL_OPD_HOME=DIR python -m bench.continual --out FILE.json [--seed N] [--quick] [--set FIELD=VALUE ...]

DIR must be a fresh (empty or missing) home.

Runs on one thread (the rest of the benchmark runs beside it). `--quick` uses tiny budgets
(configs/smoke.yaml) to exercise the machinery only; its numbers mean nothing.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from cli.demo import demo_batch_path
from cli.outcome import print_outcome
from cli.run import run_flow
from continual_opd import accuracy_matrix, registry
from continual_opd.batch_io import load_batch
from continual_opd.home import current_home, prepare_stores
from continual_opd.records import SkippedBatch, UpdateOutcome
from continual_opd.suites import build_suites
from continual_opd.tracking import code_revision
from demo_world.bootstrap import bootstrap
from demo_world.skills import CATALOGUE
from flows.continual_update import read_champion
from flows.params import load_params

ROOT = Path(__file__).resolve().parents[1]
SEQUENCE = ("add", "sub", "mul")
COLD_START_SKILL = "mul"  # the one target the base scores 0.0 on: RL from the champion gets no reward
BATCH_ROWS = 2048  # `continual-opd demo`'s default batch size
# Seeds, and what each may be used for. A recipe is chosen on screening seeds only; the others report. Seeds 0-2
# are `make bench`'s: the recipe before the selection part existed was tuned on them (docs/benchmark.md), so they
# are in-sample. Seeds 3 and 4 were looked at once. Seeds 5-7 showed the rules' 5% bound firing on `sub`, and
# seeds 8-10, run at a 2% bound, showed it missing `mul` (continual_opd.rules): both sets have informed a choice and
# are screening seeds now. Seeds 11-13 have chosen nothing: out of sample.
REPORT_SEEDS, OUT_OF_SAMPLE_SEEDS, SCREENING_SEEDS = (0, 1, 2), (11, 12, 13), (5, 6, 7, 8, 9, 10, 100, 101, 102)

# Budgets. Full: the flow's defaults, no override. Quick: configs/smoke.yaml.
QUICK_CONFIG = str(ROOT / "configs" / "smoke.yaml")


def _run_flow(params) -> tuple[str, list[str], object]:
    """One update through the flow as `continual-opd run` runs it (`cli.run_flow`), printing the same summary;
    returns (outcome, reasons, result)."""
    state, result = run_flow(params)
    print_outcome(params, state, result)
    if isinstance(result, UpdateOutcome):
        return ("promoted" if result.decision.promoted else "rejected"), list(result.decision.reasons), result
    if isinstance(result, SkippedBatch):
        return "skipped", [result.reason], result
    return "stopped", [f"{type(result).__name__}: {result}"], result


def run_sequence(quick: bool, extra_overrides: list[str] = (), seed: int = 0, on_update=None) -> dict:
    """The sequence in the current home (`CONTINUAL_OPD_HOME`), which must be fresh. `on_update` gets the updates
    so far after each one (the command writes them, so a stopped run keeps what it measured)."""
    started, revision = time.time(), code_revision()  # the code this process runs: read before it can change
    home = prepare_stores(current_home())
    bootstrap(home)
    config = QUICK_CONFIG if quick else None
    base_overrides = [f"teacher.seed={seed}", f"distill.seed={seed}", *extra_overrides]
    updates = []
    for skill in SEQUENCE:
        t0 = time.time()
        champion_before = registry.aliases(registry.STUDENT_MODEL).get(registry.CHAMPION)
        batch = demo_batch_path(home, skill, BATCH_ROWS)
        rows = len(load_batch(str(batch)))
        params = load_params(str(batch), config, base_overrides)
        notes = [] if rows == BATCH_ROWS else [f"{rows}-row batch: {skill} has only {rows} train prompts"]
        size = len(build_suites(CATALOGUE, [skill], params.evaluation.suite_size)[skill])
        if size < params.evaluation.suite_size:
            notes.append(f"the gate's {skill} suite has {size} items: all of its held-out prompts")
        outcome, reasons, result = _run_flow(params)
        entry = {"skill": skill, "batch": batch.name, "outcome": outcome, "reasons": reasons,
                 "champion_before": champion_before,
                 "champion_after": registry.aliases(registry.STUDENT_MODEL).get(registry.CHAMPION),
                 "overrides": base_overrides, "notes": notes, "seconds": round(time.time() - t0, 1)}
        if hasattr(result, "teacher"):
            teacher_tags = registry.get_version(result.teacher.model.name, result.teacher.model.version).tags
            candidate_tags = registry.get_version(result.candidate.model.name, result.candidate.model.version).tags
            entry["teacher"] = {"version": result.teacher.model.version,
                                "initial_accuracy": result.teacher.initial_accuracy,
                                "accuracy": result.teacher.accuracy, "best_step": result.teacher.steps,
                                "warm_start": teacher_tags.get("warm_start", "none")}
            entry["candidate"] = {k: candidate_tags.get(k, "") for k in ("replay_teachers", "cold_target", "alpha")}
            entry["suites"] = {name: {"champion": s.champion_acc, "candidate": s.candidate_acc, "delta": s.delta,
                                      "ci": [s.delta_ci_low, s.delta_ci_high]}
                                for name, s in result.report.suites.items()}
            entry["kl_core"] = result.report.kl_core
        updates.append(entry)
        print(f"bench.continual: update {skill}: {outcome} ({entry['seconds']:.0f}s), champion "
              f"v{entry['champion_before']} -> v{entry['champion_after']}", flush=True)
        if on_update is not None:
            on_update({"quick": quick, "seed": seed, "home": str(home.root), "partial": True, "updates": updates})
    model = accuracy_matrix.load(home, registry.STUDENT_MODEL)
    gem = accuracy_matrix.gem_metrics(model)
    return {"quick": quick, "seed": seed, "code_revision": revision, "home": str(home.root),
            "sequence": list(SEQUENCE), "updates": updates,
            "matrix": model, "columns": accuracy_matrix.columns(model), "ACC": gem["ACC"], "BWT": gem["BWT"],
            "acceptance": acceptance(updates),
            "budgets": {"config": config or "flow defaults", "overrides": base_overrides},
            "threads": 1, "total_seconds": round(time.time() - started, 1)}


def acceptance(updates: list[dict]) -> dict:
    """The sequence's acceptance numbers (see the module docstring), from the updates' records."""
    taught_at = {}  # skill -> accuracy on its suite when it was promoted
    share = {}
    for u in updates:
        target = u.get("suites", {}).get(u["skill"])
        if target and "teacher" in u:
            teacher_gain = u["teacher"]["accuracy"] - u["teacher"]["initial_accuracy"]
            share[u["skill"]] = (target["candidate"] - target["champion"]) / teacher_gain if teacher_gain > 0 else None
        if u["outcome"] == "promoted" and target:
            taught_at[u["skill"]] = target["candidate"]
    last = updates[-1] if updates else {}
    final = {name: s["candidate" if last.get("outcome") == "promoted" else "champion"]
             for name, s in last.get("suites", {}).items()}
    retention = {skill: final[skill] - acc for skill, acc in taught_at.items()
                 if skill != last.get("skill") and skill in final}
    return {"all_promoted": all(u["outcome"] == "promoted" for u in updates),
            "share_of_teacher_gain": share,
            "taught_change_after_last": retention,
            "worst_taught_change": min(retention.values()) if retention else None,
            "taught_within_2_points": all(v >= -0.02 for v in retention.values()),
            "every_share_at_least_80pct": all(v is not None and v >= 0.8 for v in share.values())}


def _champion_ref():
    return read_champion(registry.STUDENT_MODEL)


def continual_markdown(result: dict) -> str:
    """A results section: the accuracy matrix (cells in %), ACC, BWT, and one decision line per update."""
    minutes = result["total_seconds"] / 60
    lines = [f"### Continual sequence: {' -> '.join(result['sequence'])}" + (" (quick, machinery only)"
                                                                            if result.get("quick") else ""), "",
             f"Three updates through the real flow on a fresh home, one CPU thread, {minutes:.1f} min in all. "
             f"Budgets: {result['budgets']['config']}"
             + (f" with {', '.join(result['budgets']['overrides'])}" if result['budgets']['overrides'] else "") + ".",
             "", "Rows are the successive champions; a cell is that version's accuracy on the suite (blank: never "
             "measured there). A rejected candidate is no row: its numbers are in its decision line below.", "",
             accuracy_matrix.render_markdown(registry.STUDENT_MODEL, result["matrix"]), ""]
    for u in result["updates"]:
        moved = (f"champion v{u['champion_before']} -> v{u['champion_after']}"
                 if u["champion_after"] != u["champion_before"] else f"champion stays v{u['champion_before']}")
        teacher = (f"; teacher {u['teacher']['initial_accuracy']:.3f} -> {u['teacher']['accuracy']:.3f}"
                   if "teacher" in u else "")
        target = u.get("suites", {}).get(u["skill"])
        gain = f"; {u['skill']} {target['champion']:.3f} -> {target['candidate']:.3f}" if target else ""
        lines.append(f"- **{u['skill']}**: {u['outcome']} ({moved}, {u['seconds'] / 60:.1f} min{teacher}{gain})")
        for note in u["notes"]:
            lines.append(f"  - {note}")
        if u["outcome"] != "promoted":
            lines += [f"  - {reason}" for reason in u["reasons"]]
    return "\n".join(lines)


def sample_of(seed: int) -> str:
    """What a seed's result is evidence of: `in-sample` (a recipe was tuned on it), `out-of-sample`, `screening`."""
    return ("in-sample" if seed in REPORT_SEEDS else "out-of-sample" if seed in OUT_OF_SAMPLE_SEEDS
            else "screening" if seed in SCREENING_SEEDS else "other")


def _revision(result: dict) -> str:
    """The commit a sequence ran at, short ('+dirty' kept: uncommitted changes ran too)."""
    revision = result.get("code_revision")
    if not revision:
        return "not recorded"
    return revision[:7] + ("+dirty" if revision.endswith("+dirty") else "")


def _base_add(result: dict) -> str:
    """The base's accuracy on the gate's add suite (every number of a sequence depends on the machine's base)."""
    first = (result.get("matrix") or {}).get("accuracy", {}).get("1", {})
    return f"{100 * first['add']:.1f}%" if "add" in first else "-"


def continual_summary_markdown(results: list[dict]) -> str:
    """One line per seed against the acceptance: promotions, share of each teacher's gain, worst taught change."""
    lines = ["| seed | sample | code | base add | promoted | share of teacher gain (add / sub / mul) | taught skills "
             "after the last update (change since taught, points) | drift/kl_core (max) | minutes |",
             "|---|---|---|---:|---|---|---|---|---:|"]
    for r in results:
        acc = r.get("acceptance") or acceptance(r["updates"])  # partial or older runs did not record it
        promoted = sum(u["outcome"] == "promoted" for u in r["updates"])
        shares = " / ".join("-" if acc["share_of_teacher_gain"].get(s) is None
                            else f"{acc['share_of_teacher_gain'][s]:.2f}" for s in r["sequence"])
        kept = ", ".join(f"{s} {100 * d:+.1f}" for s, d in acc["taught_change_after_last"].items()) or "-"
        kl = max((u.get("kl_core", 0.0) for u in r["updates"]), default=0.0)
        lines.append(f"| {r.get('seed', 0)} | {sample_of(r.get('seed', 0))} | {_revision(r)} | {_base_add(r)} | "
                     f"{promoted}/{len(r['updates'])} | "
                     f"{shares} | {kept} | {kl:.4f} | {r['total_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.continual", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="result JSON (required unless --summarise)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: machinery only")
    parser.add_argument("--seed", type=int, default=0, help="seed of every update's teacher and distillation")
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="RESULT_JSON",
                        help="print the markdown of earlier runs' results, one per seed (no training)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="flow parameter override for every update (as `continual-opd run --set`), repeatable")
    args = parser.parse_args(argv)
    if args.summarise:
        results = [json.loads(p.read_text()) for p in args.summarise]
        rendered = (f"Rendered by `python -m bench.continual --summarise {' '.join(map(str, args.summarise))}`; "
                    "what the numbers mean: docs/benchmark.md.")
        print("\n\n".join([rendered, continual_summary_markdown(results), *map(continual_markdown, results)]))
        return 0
    if args.out is None:
        parser.error("--out is required (unless --summarise)")
    home = current_home()
    if home.mlflow_db.exists() or any(home.models.glob("*")):  # importing the package creates prefect/ only
        print(f"error: the home {home.root} has a registry already; the sequence needs a fresh one (set "
              "CONTINUAL_OPD_HOME to a new folder)", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(1)  # one core per benchmark lane
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(result: dict) -> None:
        partial = args.out.with_name(args.out.name + ".partial")
        partial.write_text(json.dumps(result, indent=1, default=str))
        partial.replace(args.out)

    result = run_sequence(args.quick, args.set, args.seed, on_update=write)
    write(result)
    print(continual_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
