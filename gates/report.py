"""The gate's report: markdown (for a Prefect artifact and MLflow), a before/after PNG chart and an HTML page.

The chart has one pair of bars per suite (champion, candidate) and, below, the paired delta with its
95% CI against the policy's margin, so a reader sees at once which suite moved, by how much, and whether
the move is beyond noise. The HTML page embeds the chart and the markdown tables, for the MLflow UI.
"""

import base64
import html
import math
from pathlib import Path

from continual_opd.records import EvalReport


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:+.1f}"


def suite_table(report: EvalReport) -> str:
    lines = ["| suite | n | champion | candidate | delta (points) | 95% CI | McNemar p | lenient champion | "
             "lenient candidate |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in report.suites.items():
        lines.append(f"| {name} | {s.n} | {_pct(s.champion_acc)} | {_pct(s.candidate_acc)} | {_pts(s.delta)} | "
                     f"[{_pts(s.delta_ci_low)}, {_pts(s.delta_ci_high)}] | "
                     f"{'n/a' if not math.isfinite(s.mcnemar_p) else f'{s.mcnemar_p:.3g}'} | "
                     f"{_pct(s.champion_lenient_acc)} | {_pct(s.candidate_lenient_acc)} |")
    return "\n".join(lines)


def render_markdown(*, title: str, decision: str, reasons: list[str], checks, report: EvalReport,
                    policy_version: str, candidate_version: str, champion_version: str, matrix_markdown: str = "",
                    notes: list[str] = ()) -> str:
    """The decision, its reasons, every check, the suite table and the accuracy matrix."""
    lines = [f"# {title}: {decision.upper()}", "",
             f"candidate **v{candidate_version}** vs champion **v{champion_version or 'none'}**, "
             f"policy `{policy_version}`", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "## Reasons", ""]
    lines += [f"- {r}" for r in reasons] or ["- every threshold of the policy passed"]
    lines += ["", "## Suites", "", suite_table(report), "",
              f"drift/kl_core (per-token KL(champion || candidate) on core prompts): "
              f"{'n/a' if not math.isfinite(report.kl_core) else f'{report.kl_core:.4f}'}", "",
              "## Checks", "", "| threshold | kind | observed | requirement | result | why |",
              "|---|---|---|---|---|---|"]
    for c in checks:
        result = "skipped" if c.passed is None else ("pass" if c.passed else "FAIL")
        observed = "missing" if c.observed is None else f"{c.observed:.4g}"
        why = " ".join(getattr(c, "why", "").split())
        lines.append(f"| {c.metric} | {c.kind} | {observed} | {c.requirement} | {result} | {why} |")
    if matrix_markdown:
        lines += ["", "## Accuracy matrix", "", matrix_markdown]
    return "\n".join(lines) + "\n"


def render_chart(report: EvalReport, path: str | Path, margins: dict[str, float] | None = None,
                 title: str = "") -> Path:
    """Before/after accuracy per suite with the candidate's CI, and the paired delta with CI vs margin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(report.suites)
    s = [report.suites[n] for n in names]
    x = np.arange(len(names))
    champ = np.array([v.champion_acc for v in s], dtype=float)
    cand = np.array([v.candidate_acc for v in s], dtype=float)
    low = np.array([v.delta_ci_low for v in s], dtype=float)
    high = np.array([v.delta_ci_high for v in s], dtype=float)
    delta = np.array([v.delta for v in s], dtype=float)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 1.3 * len(names) + 2), 7), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    width = 0.38
    top.bar(x - width / 2, np.nan_to_num(champ), width, label=f"champion v{report.champion_version or '-'}",
            color="#8c8c8c")
    has_ci = np.isfinite(low) & np.isfinite(high)
    cand_err = np.vstack([np.where(has_ci, delta - low, 0), np.where(has_ci, high - delta, 0)])
    top.bar(x + width / 2, cand, width, yerr=cand_err, capsize=4, label=f"candidate v{report.candidate_version}",
            color="#3b7dd8")
    top.set_ylim(0, 1.22)
    top.set_ylabel("strict accuracy")
    top.legend(loc="upper right", fontsize=8, ncol=2)
    top.set_title(title or "forgetting suite: champion vs candidate (error bars: 95% paired CI)")
    for xi, c, up in zip(x, cand, cand_err[1], strict=True):
        top.annotate(f"{100 * c:.1f}", (xi + width / 2, c + up + 0.005), ha="center", va="bottom", fontsize=7)

    colors = ["#c0392b" if (margins and n in margins and math.isfinite(lo) and lo < margins[n]) else "#2e8b57"
              for n, lo in zip(names, low, strict=True)]
    for xi, d, lo, hi, color in zip(x, delta, low, high, colors, strict=True):
        if math.isfinite(d):
            err = [[100 * (d - lo)], [100 * (hi - d)]] if math.isfinite(lo) and math.isfinite(hi) else None
            bottom.errorbar([xi], [100 * d], yerr=err, fmt="o", color=color, capsize=5, linewidth=2)
    bottom.axhline(0, color="black", linewidth=0.8)
    for xi, n in zip(x, names, strict=True):
        if margins and n in margins:
            bottom.hlines(100 * margins[n], xi - 0.4, xi + 0.4, colors="#e67e22", linestyles="dashed")
    bottom.set_ylabel("delta, points (dashed: margin)")
    bottom.set_xticks(x, names)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_html(markdown_text: str, chart: Path) -> str:
    """A self-contained page: the chart inline and the markdown as preformatted text (no CDN, offline)."""
    image = base64.b64encode(Path(chart).read_bytes()).decode()
    return ("<!doctype html><html><head><meta charset='utf-8'><title>gate report</title></head>"
            "<body style='font-family:sans-serif;max-width:1100px;margin:auto'>"
            f"<img alt='before/after chart' src='data:image/png;base64,{image}' style='max-width:100%'>"
            f"<pre style='white-space:pre-wrap'>{html.escape(markdown_text)}</pre></body></html>")
