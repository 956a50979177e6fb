"""`make bench` / `python -m bench`: run the whole benchmark, write docs/bench/, log one MLflow bench run.

Order: the step-efficiency measurement runs first and alone (its ratios are timings); then the continual
sequence and the seeds of the grid run as separate processes, two at a time, one torch thread each (this
machine has two cores; oversubscribed threads made training 20x slower). Every part gets its own
scratch home under `<home>/bench/<stamp>/`, so the benchmark never touches the home's champion or registry;
the bench run itself is logged to the home's MLflow (experiment `bench`) with every table, plot and JSON.
"""

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import report
from bench.continual import OUT_OF_SAMPLE_SEEDS, REPORT_SEEDS, continual_markdown, continual_summary_markdown
from bench.grid import GridConfig, teacher_curve
from bench.lanes import run_lanes
from bench.step_efficiency import markdown as step_markdown
from continual_opd.home import Home, current_home, prepare_stores
from continual_opd.tracking import code_revision

QUICK = GridConfig(seeds=(0, 1), steps=10, prompts_per_step=32, teacher_steps=10, teacher_gate_margin=0.0,
                   batch_rows=256, probe_every=5, probe_items=40, kl_prompts=32)
LANES = 2
CONTINUAL_SEEDS, QUICK_CONTINUAL_SEEDS = (*REPORT_SEEDS, *OUT_OF_SAMPLE_SEEDS), (0,)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/bench"), help="where tables, plots and JSON go")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the machinery in minutes, "
                                                             "measures nothing")
    parser.add_argument("--skip-continual", action="store_true", help="leave the continual sequence out")
    parser.add_argument("--rebuild", type=Path, metavar="RESULTS_JSON",
                        help="re-render tables and plots from an earlier run's results.json (no training)")
    parser.add_argument("--continual", nargs="+", type=Path, metavar="SEQUENCE_JSON",
                        help="with --rebuild: the continual sequence from these bench.continual results instead of "
                             "the run's own (each keeps its own commit and seed; the page names them)")
    args = parser.parse_args(argv)
    if args.rebuild:
        return rebuild(args.rebuild, args.out, args.continual)

    started, revision = time.perf_counter(), code_revision()  # the code the parts run: read before it can change
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    home = current_home()
    work = home.root / "bench" / stamp
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cfg = QUICK if args.quick else GridConfig()

    def log(msg: str) -> None:
        print(f"[bench {time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    py = sys.executable
    seconds = run_lanes([("step_efficiency", [py, "-m", "bench.step_efficiency", "--out",
                                               str(work / "step_efficiency.json")], work / "step-efficiency")],
                         1, log)
    jobs = []
    seeds = () if args.skip_continual else QUICK_CONTINUAL_SEEDS if args.quick else CONTINUAL_SEEDS
    for seed in seeds:
        jobs.append((f"continual seed {seed}", [py, "-m", "bench.continual", "--seed", str(seed), "--out",
                                                str(work / f"continual-seed{seed}.json"),
                                                *(["--quick"] if args.quick else [])], work / f"continual-seed{seed}"))
    for seed in cfg.seeds:
        seed_cfg = cfg.model_copy(update={"seeds": (seed,)})
        jobs.append((f"grid seed {seed}", [py, "-m", "bench.grid", "--config", seed_cfg.model_dump_json(), "--out",
                                           str(work / f"grid-seed{seed}.json")], work / f"grid-seed{seed}"))
    seconds |= run_lanes(jobs, LANES, log)

    grid = {"config": cfg.model_dump(), "seeds": []}
    for seed in cfg.seeds:
        grid["seeds"] += json.loads((work / f"grid-seed{seed}.json").read_text())["seeds"]
    step_eff = json.loads((work / "step_efficiency.json").read_text())
    continual = [json.loads((work / f"continual-seed{seed}.json").read_text()) for seed in seeds] or None
    total = time.perf_counter() - started
    results = {"stamp": stamp, "code_revision": revision, "quick": args.quick, "total_seconds": total,
               "part_seconds": seconds, "grid": grid, "step_efficiency": step_eff, "continual": continual}
    written = write_results(results, out)
    run_id = log_bench_run(results, written, home)
    log(f"wrote {', '.join(str(p) for p in written)}; MLflow bench run {run_id}; total {total / 60:.1f} min")
    return 0


def rebuild(results_json: Path, out: Path, continual: list[Path] | None = None) -> int:
    """Re-render an earlier run, filling what newer report code reads from that run's own stores (its scratch
    homes are kept under `<home>/bench/<stamp>/`): today, the teachers' GRPO curves. `continual` replaces the run's
    sequence by later `bench.continual` results (recorded with their files under `continual_sources`)."""
    results = json.loads(results_json.read_text())
    if isinstance(results.get("continual"), dict):  # runs before the sequence had seeds held one sequence
        results["continual"] = [results["continual"]]
    if continual:
        results["continual"] = [json.loads(p.read_text()) for p in continual]
        results["continual_sources"] = [str(p) for p in continual]
    work = current_home().root / "bench" / results["stamp"]
    for entry in results["grid"]["seeds"]:
        if not entry["teacher"].get("curve"):
            seed_home = Home(work / f"grid-seed{entry['seed']}")
            entry["teacher"]["curve"] = teacher_curve(entry["teacher"]["run_id"], f"sqlite:///{seed_home.mlflow_db}")
    out.mkdir(parents=True, exist_ok=True)
    written = write_results(results, out)
    run_id = log_bench_run(results, written, current_home())
    print(f"rebuilt {', '.join(str(p) for p in written)} from run {results['stamp']}; MLflow bench run {run_id}")
    return 0


def write_results(results: dict, out: Path) -> list[Path]:
    grid = results["grid"]
    plots = report.plot(grid, out)
    cfg = grid["config"]
    parts = [
        f"# Benchmark results ({'QUICK smoke run: measures nothing' if results['quick'] else 'make bench'})",
        "",
        f"Run {results['stamp']} at code {results.get('code_revision', 'not recorded in results.json')}, "
        f"{results['total_seconds'] / 60:.1f} minutes on this machine "
        f"({os.cpu_count()} CPUs). What the numbers mean: [docs/benchmark.md](../benchmark.md). "
        "Raw data: `results.json`.",
        "",
        f"Budgets: {len(cfg['seeds'])} seeds; each method {cfg['steps']} steps x {cfg['prompts_per_step']} "
        f"completions (lr {cfg['learning_rate']:g}; grpo {cfg['grpo_learning_rate']:g}), probes every "
        f"{cfg['probe_every']} steps on {cfg['probe_items']} held-out items per skill; teachers: GRPO up to "
        f"{cfg['teacher_steps']} steps on {cfg['batch_rows']} add rows.",
        "", "## Teachers (claim 1: RL teaches the teacher the skill)", "", report.teachers_markdown(grid),
        "", "## Methods on the student, equal budgets (claims 2 and 3)", "", report.methods_markdown(grid),
        "", "### Against RL with its best recipe", "",
        "The `grpo` row above runs at the distillation budget. Each seed's teacher is also GRPO from the same "
        "base, with the teacher stage's tuned recipe (32 prompts x 8 completions, lr 3e-4 cosine, up to "
        f"{cfg['teacher_steps']} steps), so its own held-out curve (200 items, read from its MLflow run) is the "
        "fairer RL reference:", "", report.rl_reference_markdown(grid),
        "", "![target vs tokens](target_vs_tokens.png)", "", "![forgetting frontier](forgetting_frontier.png)",
        "", "## Step efficiency", "", step_markdown(results["step_efficiency"]),
    ]
    if results["continual"] is not None:
        sources = results.get("continual_sources")
        parts += ["", "## Continual sequence through the real flow", "",
                  *([f"From separate runs of bench.continual, not this run: {', '.join(f'`{s}`' for s in sources)} "
                     "(code "
                     f"{', '.join(sorted({r.get('code_revision', 'not recorded') for r in results['continual']}))})."
                     "", ""] if sources else []),
                  continual_summary_markdown(results["continual"])]
        for one in results["continual"]:
            parts += ["", continual_markdown(one)]
    parts += ["", "## Wall time per part", "", "| part | seconds |", "| --- | ---: |"]
    parts += [f"| {name} | {sec:.0f} |" for name, sec in results["part_seconds"].items()]
    md = out / "results.md"
    md.write_text("\n".join(parts) + "\n")
    raw = out / "results.json"
    raw.write_text(json.dumps(results, indent=1))
    return [md, raw, *plots]


def log_bench_run(results: dict, files: list[Path], home) -> str:
    """One MLflow run in the home's experiment `bench`: config, code revision, headline metrics, all files."""
    import mlflow

    prepare_stores(home)
    mlflow.set_experiment("bench")
    with mlflow.start_run(run_name=f"bench-{results['stamp']}") as run:
        mlflow.set_tags({"code_revision": results.get("code_revision") or code_revision(),
                         "quick": str(results["quick"])})
        mlflow.log_params({f"grid.{k}": v for k, v in results["grid"]["config"].items()})
        mlflow.log_metrics({**report.flat_metrics(results["grid"], results["step_efficiency"], results["continual"]),
                            "total_seconds": results["total_seconds"]})
        for path in files:
            mlflow.log_artifact(str(path))
    return run.info.run_id


if __name__ == "__main__":
    raise SystemExit(main())
