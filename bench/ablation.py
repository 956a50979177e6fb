"""Benchmark part: the levers of sequential updates, each alone and together, on the update that used to fail.

Why: the second update of the continual sequence (`sub` after `add`) used to learn its skill and lose `add`.
Each lever of `tasks.distill_config` is a setting; this measures what each one does on that update, from the same
`add` champion with the same `sub` teacher, so the only difference between two rows is the lever. `before` is the
recipe of the single-update benchmark (a quarter of each step replay in equal shares, every replay row scored by
the champion, reverse KL everywhere); `combination` is the product's defaults; every other row is `before` with
one lever changed.

Per seed, on a fresh home: the `add` update through the real flow (defaults, promoted or the seed is reported as
such), the `sub` teacher through the teacher stage (defaults), then one distillation per variant and the gate's
evaluation of it against the `add` champion (1,000-item suites, the default policy's statistics). Nothing is
promoted: the variants are compared, not gated. Reported per variant: the gain on `sub`, the change of `add`
(point estimate and CI low), the worst core change, `drift/kl_core`, and the distillation's training seconds.

    CONTINUAL_OPD_HOME=DIR python -m bench.ablation --seed N --out FILE.json [--variants a,b,...] [--quick]

Runs on one thread; two seeds run side by side on this 2-core machine.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from cli.demo import demo_batch_path
from cli.run import run_flow
from continual_opd import registry
from continual_opd.home import current_home, prepare_stores
from demo_world.bootstrap import bootstrap
from demo_world.skills import CATALOGUE
from flows.continual_update import read_champion
from flows.params import load_params
from tasks.distill import distill
from tasks.evaluate import evaluate
from tasks.teacher_rl import train_teacher

BATCH_ROWS = 2048
QUICK_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
BEFORE = {"replay_fraction": 0.25, "taught_replay_weight": 1.0, "replay_teachers": "champion", "beta": 1.0}
VARIANTS: dict[str, dict] = {
    "before": BEFORE,
    "replay_balance": {**BEFORE, "replay_fraction": 0.5, "taught_replay_weight": 8.0},
    "own_teachers": {**BEFORE, "replay_teachers": "own"},
    "forward_kl_target": {**BEFORE, "beta": 0.0},
    "lora_r16": {**BEFORE, "lora_rank": 16},
    "combination": {},
}


def run(seed: int, variants: list[str], config: str | None = None) -> dict:
    started = time.time()
    home = prepare_stores(current_home())
    bootstrap(home)
    seeds = [f"teacher.seed={seed}", f"distill.seed={seed}"]
    state, result = run_flow(load_params(str(demo_batch_path(home, "add", BATCH_ROWS)), config, seeds))
    promoted = getattr(getattr(result, "decision", None), "promoted", False)
    out = {"seed": seed, "add_update": "promoted" if promoted else f"not promoted: {result}", "variants": {}}
    if not promoted and config is None:
        return out
    champion = read_champion(registry.STUDENT_MODEL)
    params = load_params(str(demo_batch_path(home, "sub", BATCH_ROWS)), config, seeds)
    batch = _accepted(params, champion, home)
    teacher = train_teacher(batch, champion, params.teacher, CATALOGUE, home)
    out["teacher"] = {"initial_accuracy": teacher.initial_accuracy, "accuracy": teacher.accuracy}
    for name in variants:
        cfg = params.distill.model_copy(update=VARIANTS[name])
        t0 = time.time()
        candidate = distill(batch, champion, teacher, cfg, CATALOGUE, home)
        report = evaluate(champion, candidate, "sub", params.evaluation, CATALOGUE, home)
        core = [s for s in CATALOGUE.core if s in report.suites]
        add = report.suites.get("add")  # absent only when the add update was not promoted (--quick)
        out["variants"][name] = {
            "settings": VARIANTS[name],
            "sub_gain": report.suites["sub"].delta,
            "add_change": add.delta if add else None, "add_ci_low": add.delta_ci_low if add else None,
            "worst_core_change": min(report.suites[s].delta for s in core),
            "kl_core": report.kl_core, "train_seconds": candidate.metrics.get("train_seconds"),
            "seconds": round(time.time() - t0, 1)}
        print(f"bench.ablation seed {seed}: {name}: {out['variants'][name]}", flush=True)
    out["total_seconds"] = round(time.time() - started, 1)
    return out


def merge_seeds(results: list[dict]) -> list[dict]:
    """One result per seed: the variants of a seed that ran in several homes (`--variants`) are put together.

    The parts must share the seed's `add` champion and `sub` teacher (the seed makes them); parts that do not
    were not the same experiment, and are refused.
    """
    merged: dict[int, dict] = {}
    for result in results:
        seed = merged.setdefault(result["seed"], {"seed": result["seed"], "teacher": result["teacher"],
                                                  "variants": {}})
        if result["teacher"] != seed["teacher"]:
            raise ValueError(f"seed {result['seed']}: the parts have different sub teachers ({seed['teacher']} and "
                             f"{result['teacher']}), so they are not one experiment")
        seed["variants"].update(result["variants"])
    return [merged[s] for s in sorted(merged)]


def ablation_markdown(results: list[dict]) -> str:
    """Per variant, over the seeds: mean (and range) of each number, and the worst seed's add CI low."""
    import statistics

    done = [r for r in merge_seeds(results) if r.get("variants")]
    lines = [f"Seeds {', '.join(str(r['seed']) for r in done)} (sub teacher gain, points: "
             + ", ".join(f"{100 * (r['teacher']['accuracy'] - r['teacher']['initial_accuracy']):+.1f}" for r in done)
             + "). Mean over the seeds, [min, max] in brackets.", "",
             "| variant | sub gain (points) | add change (points) | add CI low (worst seed) | worst core change | "
             "drift/kl_core | distillation seconds |", "|---|---|---|---|---|---|---|"]

    def cell(values, scale=100.0, fmt="{:+.1f}"):
        values = [v * scale for v in values if v is not None]
        if not values:
            return "-"
        text = fmt.format(statistics.mean(values))
        return text + (f" [{fmt.format(min(values))}, {fmt.format(max(values))}]" if len(values) > 1 else "")

    for name in VARIANTS:
        rows = [r["variants"][name] for r in done if name in r["variants"]]
        if not rows:
            continue
        worst_ci = min((row["add_ci_low"] for row in rows if row["add_ci_low"] is not None), default=None)
        lines.append(f"| {name} | {cell([r['sub_gain'] for r in rows])} | {cell([r['add_change'] for r in rows])} | "
                     f"{'-' if worst_ci is None else f'{100 * worst_ci:+.1f}'} | "
                     f"{cell([r['worst_core_change'] for r in rows])} | "
                     f"{cell([r['kl_core'] for r in rows], 1.0, '{:.4f}')} | "
                     f"{cell([r['train_seconds'] for r in rows], 1.0, '{:.0f}')} |")
    return "\n".join(lines)


def _accepted(params, champion, home):
    """The `sub` batch through the data contract, as the flow's first stage does."""
    from tasks.validate import validate_batch

    return validate_batch(params.batch, params.contract, CATALOGUE, params.evaluation.suite_size, champion.folder,
                          home, None, move=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ablation", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny budgets (configs/smoke.yaml): machinery only")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="RESULT_JSON",
                        help="print the markdown table of earlier runs' results (no training); the parts of a seed "
                             "run with --variants in several homes are merged")
    args = parser.parse_args(argv)
    if args.summarise:
        print(ablation_markdown([json.loads(p.read_text()) for p in args.summarise]))
        return 0
    import torch

    torch.set_num_threads(1)
    if args.out is None:
        parser.error("--out is required (unless --summarise)")
    result = run(args.seed, args.variants.split(","), QUICK_CONFIG if args.quick else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
