"""Turn the grid's curves into the benchmark's tables and plots (mean and spread across seeds).

Per (seed, method) the curve is a list of probe points (`bench.probe.Probe`). The teacher's gain is
measured on the same probe items as the methods: gain(t) = (acc(t) - acc(0)) / (teacher - acc(0)).
"Steps (tokens) to 50% / 90%" is the first probe point whose gain reaches the level; a run that never
does counts as not reaching it (shown as "-" with how many seeds did reach it).
"""

import math
import statistics

from demo_world.skills import CORE_SKILLS

LEVELS = (0.5, 0.9)
COLORS = {"opd": "tab:blue", "opd_no_replay": "tab:orange", "sft_teacher_samples": "tab:green", "grpo": "tab:red"}


def gain(point: dict, start: dict, teacher_acc: float) -> float:
    room = teacher_acc - start["acc/add"]
    return (point["acc/add"] - start["acc/add"]) / room if room > 0 else math.nan


def first_reaching(points: list[dict], teacher_acc: float, level: float) -> dict | None:
    return next((p for p in points if gain(p, points[0], teacher_acc) >= level), None)


def tokens_of(run: dict, point: dict) -> float:
    """Sampled completion tokens behind `point`: the student's, or the teacher's for sft_teacher_samples."""
    if "teacher_tokens" in run:
        return run["teacher_tokens"] * point["step"] / run["config"]["steps"]
    return point["student_tokens"]


def per_run(run: dict, teacher_acc: float) -> dict:
    pts = run["points"]
    first, last = pts[0], pts[-1]
    out = {"final_add": last["acc/add"], "gain_share": gain(last, first, teacher_acc),
           "core_delta": {c: last[f"acc/{c}"] - first[f"acc/{c}"] for c in CORE_SKILLS},
           "kl_core": last["kl_core"], "train_seconds": last["train_seconds"],
           "student_tokens": last["student_tokens"], "steps": last["step"]}
    out["core_delta_min"] = min(out["core_delta"].values())
    for level in LEVELS:
        hit = first_reaching(pts, teacher_acc, level)
        out[f"steps_{int(level * 100)}"] = hit["step"] if hit else None
        out[f"tokens_{int(level * 100)}"] = tokens_of(run, hit) if hit else None
    return out


def summarise(grid: dict) -> dict[str, dict]:
    """method -> {metric: [value per seed]} plus the teachers' numbers."""
    table: dict[str, dict] = {}
    for entry in grid["seeds"]:
        teacher_acc = entry["teacher"]["probe"]["acc/add"]
        for method, run in entry["runs"].items():
            row = table.setdefault(method, {})
            for key, value in per_run(run, teacher_acc).items():
                row.setdefault(key, []).append(value)
    return table


def measured(values: list) -> list:
    """The values a seed actually produced: no None (level never reached) and no NaN (no room to gain)."""
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _mean_sd(values: list, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    vals = [v * scale for v in measured(values)]
    if not vals:
        return "-"
    text = fmt.format(statistics.mean(vals))
    if len(vals) > 1:
        text += " ± " + fmt.format(statistics.stdev(vals))
    if len(vals) < len(values):
        text += f" ({len(vals)}/{len(values)} seeds)"
    return text


def teachers_markdown(grid: dict) -> str:
    lines = ["| seed | base add (probe) | teacher add (probe) | teacher gain | teacher gate set | RL steps | seconds |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for entry in grid["seeds"]:
        t = entry["teacher"]
        base = next(iter(entry["runs"].values()))["points"][0]["acc/add"]
        lines.append(f"| {entry['seed']} | {100 * base:.1f}% | {100 * t['probe']['acc/add']:.1f}% | "
                     f"{100 * (t['probe']['acc/add'] - base):+.1f} pts | {100 * t['initial_accuracy']:.1f}% -> "
                     f"{100 * t['accuracy']:.1f}% | {t['steps']} | {t['seconds']:.0f} |")
    return "\n".join(lines)


def methods_markdown(grid: dict) -> str:
    table = summarise(grid)
    lines = ["| method | final add (%) | share of teacher gain (%) | worst core change (pts) | "
             "core change per skill (pts) | drift/kl_core | steps to 50% / 90% | tokens to 50% / 90% (k) | "
             "train seconds |",
             "| --- | ---: | ---: | ---: | --- | ---: | --- | --- | ---: |"]
    for method, row in table.items():
        per_core = ", ".join(f"{c} {_mean_sd([d[c] for d in row['core_delta']], 100)}" for c in CORE_SKILLS)
        lines.append(
            f"| {method} | {_mean_sd(row['final_add'], 100)} | {_mean_sd(row['gain_share'], 100, '{:.0f}')} | "
            f"{_mean_sd(row['core_delta_min'], 100)} | {per_core} | {_mean_sd(row['kl_core'], 1, '{:.4f}')} | "
            f"{_mean_sd(row['steps_50'], 1, '{:.0f}')} / {_mean_sd(row['steps_90'], 1, '{:.0f}')} | "
            f"{_mean_sd(row['tokens_50'], 1e-3, '{:.0f}')} / {_mean_sd(row['tokens_90'], 1e-3, '{:.0f}')} | "
            f"{_mean_sd(row['train_seconds'], 1, '{:.0f}')} |")
    return "\n".join(lines)


def plot(grid: dict, out_dir) -> list:
    """Two PNGs: target accuracy against sampled tokens, and the forgetting frontier. Returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for entry in grid["seeds"]:
        for method, run in entry["runs"].items():
            xs = [tokens_of(run, p) / 1e3 for p in run["points"]]
            ax.plot(xs, [100 * p["acc/add"] for p in run["points"]], color=COLORS.get(method),
                    linestyle="--" if "teacher_tokens" in run else "-", alpha=0.8,
                    label=method if entry is grid["seeds"][0] else None)
        ax.axhline(100 * entry["teacher"]["probe"]["acc/add"], color="grey", linestyle=":", linewidth=1,
                   label="teachers" if entry is grid["seeds"][0] else None)
    paths.append(_finish(fig, ax, "sampled completion tokens (thousands; dashed: the teacher's samples)",
                         "add held-out accuracy (%)",
                         f"Target accuracy against rollout tokens ({len(grid['seeds'])} seeds)",
                         out_dir / "target_vs_tokens.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for entry in grid["seeds"]:
        for method, run in entry["runs"].items():
            pts = run["points"]
            core = [100 * statistics.mean(p[f"acc/{c}"] for c in CORE_SKILLS) for p in pts]
            ax.plot([100 * p["acc/add"] for p in pts], core, marker=".", color=COLORS.get(method), alpha=0.8,
                    label=method if entry is grid["seeds"][0] else None)
            ax.scatter([100 * pts[-1]["acc/add"]], [core[-1]], color=COLORS.get(method), s=40, zorder=3)
    paths.append(_finish(fig, ax, "add held-out accuracy (%)", "mean core accuracy (%)",
                         "Forgetting frontier: core against target, along training (dot = end)",
                         out_dir / "forgetting_frontier.png"))
    return paths


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path):
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rl_reference(grid: dict) -> dict[str, list]:
    """Per seed: steps and tokens the teacher stage's GRPO took to reach 50% / 90% of the gain it ended with."""
    out: dict[str, list] = {}
    for entry in grid["seeds"]:
        curve = entry["teacher"].get("curve") or []
        if not curve:
            continue
        best = max(p["acc/add"] for p in curve)
        for level in LEVELS:
            hit = first_reaching(curve, best, level)
            out.setdefault(f"steps_{int(level * 100)}", []).append(hit["step"] if hit else None)
            out.setdefault(f"tokens_{int(level * 100)}", []).append(hit["student_tokens"] if hit else None)
        out.setdefault("gain", []).append(best - curve[0]["acc/add"])
    return out


def rl_reference_markdown(grid: dict) -> str:
    """OPD's steps and tokens to each level next to GRPO's with the teacher stage's tuned recipe."""
    rl, opd = rl_reference(grid), summarise(grid).get("opd")
    if not rl or opd is None:
        return "(no teacher curves recorded)"
    lines = ["| | steps to 50% / 90% of the gain | sampled tokens to 50% / 90% (k) |", "| --- | --- | --- |",
             f"| opd on the student (gain = the teacher's) | {_mean_sd(opd['steps_50'], 1, '{:.0f}')} / "
             f"{_mean_sd(opd['steps_90'], 1, '{:.0f}')} | {_mean_sd(opd['tokens_50'], 1e-3, '{:.0f}')} / "
             f"{_mean_sd(opd['tokens_90'], 1e-3, '{:.0f}')} |",
             f"| GRPO from the same base, teacher-stage recipe (gain = its own best, "
             f"{_mean_sd(rl['gain'], 100)} pts) | {_mean_sd(rl['steps_50'], 1, '{:.0f}')} / "
             f"{_mean_sd(rl['steps_90'], 1, '{:.0f}')} | {_mean_sd(rl['tokens_50'], 1e-3, '{:.0f}')} / "
             f"{_mean_sd(rl['tokens_90'], 1e-3, '{:.0f}')} |"]
    ratios = []
    for level in ("50", "90"):
        a = [v for v in rl[f"tokens_{level}"] if v]
        b = [v for v in opd[f"tokens_{level}"] if v]
        if a and b:
            ratios.append(f"{level}%: **{statistics.mean(a) / statistics.mean(b):.1f}x**")
    if ratios:
        lines += ["", "GRPO tokens / opd tokens (means over the seeds that reached the level): " + ", ".join(ratios)]
    return "\n".join(lines)


def flat_metrics(grid: dict, step_eff: dict | None, continual: list[dict] | None) -> dict[str, float]:
    """Numbers for the MLflow bench run: per method mean across seeds, the step ratios, ACC and BWT."""
    out: dict[str, float] = {}
    for method, row in summarise(grid).items():
        for key in ("final_add", "gain_share", "core_delta_min", "kl_core", "train_seconds", "steps_90", "tokens_90"):
            vals = measured(row[key])
            if vals:
                out[f"{method}/{key}"] = statistics.mean(vals)
    rl = rl_reference(grid)
    for key in ("tokens_50", "tokens_90", "steps_50", "steps_90"):
        vals = measured(rl.get(key, []))
        if vals:
            out[f"grpo_teacher_recipe/{key}"] = statistics.mean(vals)
    if step_eff:
        for key in ("routed_over_stock", "routed_over_irreducible", "stock_over_irreducible", "routed_step_seconds",
                    "stock_step_seconds", "irreducible_seconds"):
            out[f"step_efficiency/{key}"] = step_eff[key]
    for one in continual or []:
        for key in ("ACC", "BWT"):
            if isinstance(one.get(key), (int, float)):
                out[f"continual/seed{one.get('seed', 0)}/{key}"] = one[key]
    return out
