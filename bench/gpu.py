"""`make bench-gpu` / `python -m bench.gpu`: the teacher stage, distillation and the forgetting suite on CUDA.

On a ~100M-parameter Llama built locally (`bench.gpu_world`: the demo world's tokenizer and model code,
pretrained briefly on the demo skills, a supervised `add` teacher), it measures and writes to
`<out>/gpu-<device>.md` and `.json`:

- sampled tokens/s (the routed trainer's rollouts with `model.generate`, and with vLLM when it is installed);
- the step time split into generation, teacher forwards and student forward + backward, at two shapes;
- routed / stock (TRL's `DistillationTrainer` with one teacher) and routed / irreducible passes;
- peak GPU memory of every part, and whether vLLM sampled the stages' rollouts;
- the precision check: at lr 1e-6, the share of weights that move and the `add` accuracy after, for a
  student with bf16 weights (how a GPU loaded it before) and for the distillation stage's own loading.

It refuses to run without CUDA unless given `--cpu-smoke`, which runs every part at tiny sizes on a CPU to check
the machinery (its numbers mean nothing; it writes under `.continual-opd/`, never `docs/`). Each part runs in
its own process (`bench.lanes`), in a scratch home under `<home>/bench/gpu-<stamp>/`; a part that fails is
reported with its log and the others still run. About 6-8 minutes on one H100 (budgets in `bench.gpu_world`).
"""

import argparse
import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.gpu_parts import PARTS
from bench.gpu_world import GPU, SMOKE, prepare
from bench.lanes import run_lanes
from continual_opd.home import current_home

ORDER = ["prepare", "teacher", "distill", "bf16", "steps-short", "steps-long", "vllm"]
PART_TIMEOUT = 900  # seconds: a part that hangs (a vLLM engine that never starts) is killed and reported
SMOKE_OUT = Path(".continual-opd/bench-gpu-smoke")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where the .md and .json go (default docs/bench; smoke: "
                                                 f"{SMOKE_OUT})")
    parser.add_argument("--cpu-smoke", action="store_true", help="run every part at tiny sizes on a CPU: checks the "
                                                                 "machinery, measures nothing")
    parser.add_argument("--part", choices=ORDER, help=argparse.SUPPRESS)  # one part, in its own process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = SMOKE if args.cpu_smoke else GPU
    if args.part:
        result = prepare(args.work, sizes) if args.part == "prepare" else PARTS[args.part](args.work, sizes)
        (args.work / f"{args.part}.json").write_text(json.dumps(result, indent=1, default=str))
        return 0
    env = environment()
    if env["device"] == "cpu" and not args.cpu_smoke:
        print("bench.gpu measures a CUDA GPU and none is visible (torch.cuda.is_available() is False). "
              "Run it on a GPU machine, or add --cpu-smoke to check the machinery on this CPU at tiny sizes.",
              file=sys.stderr)
        return 2
    return run(args.out or (SMOKE_OUT if args.cpu_smoke else Path("docs/bench")), args.cpu_smoke, env)


def run(out: Path, smoke: bool, env: dict) -> int:
    started = time.perf_counter()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = current_home().root / "bench" / f"gpu-{stamp}"
    home = work / "home"

    def log(msg: str) -> None:
        print(f"[bench-gpu {time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    def job(name):
        return name, [sys.executable, "-m", "bench.gpu", "--part", name, "--work", str(work),
                      *(["--cpu-smoke"] if smoke else [])], home

    logs = dict(log_name=lambda name: f"{name}.log", timeout=PART_TIMEOUT)
    seconds = run_lanes([job("prepare")], 1, log, **logs)  # everything else needs the world
    seconds |= run_lanes([job(name) for name in ORDER[1:]], 1, log, keep_going=True, **logs)
    parts = {name: json.loads((work / f"{name}.json").read_text()) if name in seconds
             else {"error": f"failed: see {home / f'{name}.log'}"} for name in ORDER}
    results = {"stamp": stamp, "smoke": smoke, "environment": env, "total_seconds": time.perf_counter() - started,
               "part_seconds": seconds, "work": str(work), "parts": parts}
    out.mkdir(parents=True, exist_ok=True)
    slug = "cpu-smoke" if smoke else re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-")
    md, raw = out / f"gpu-{slug}.md", out / f"gpu-{slug}.json"
    raw.write_text(json.dumps(results, indent=1, default=str))
    md.write_text(markdown(results) + "\n")
    print(md.read_text())
    log(f"wrote {md} and {raw}")
    return 0 if len(seconds) == len(ORDER) else 1


def environment() -> dict:
    import importlib.metadata
    import platform

    import torch

    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    return {"device": "cuda" if cuda else "cpu",
            "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
            "device_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            **{pkg: version(pkg) for pkg in ("torch", "transformers", "trl", "accelerate", "vllm")}}


def _f(value, spec=".3f") -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def _memory(m: dict | None) -> str:
    if not m:
        return "n/a"
    if m.get("device") == "cuda":
        return f"{m['allocated_gib']:.1f} GiB allocated ({m['reserved_gib']:.1f} reserved)"
    return f"{m['peak_rss_mib']:.0f} MiB peak RSS (CPU)"


def markdown(r: dict) -> str:
    env, p = r["environment"], r["parts"]
    world = p["prepare"]
    lines = [f"# GPU benchmark: {env['device_name']}" + (" (CPU SMOKE RUN: measures nothing)" if r["smoke"] else ""),
             "", f"Run {r['stamp']}, {r['total_seconds'] / 60:.1f} minutes; torch {env['torch']} (CUDA {env['cuda']}), "
             f"transformers {env['transformers']}, TRL {env['trl']}, vLLM {env['vllm'] or 'not installed'}. "
             "Made by `make bench-gpu` (`bench/gpu.py`); raw numbers in the .json beside this file.", ""]
    if "error" not in world:
        lines += [f"World: a {world['parameters'] / 1e6:.1f}M-parameter Llama ({world['shape']}), pretrained "
                  f"{world['pretrain_steps']} steps; base accuracy "
                  + ", ".join(f"{k} {v:.3f}" for k, v in world["base_accuracy"].items())
                  + f"; supervised teacher add {world['teacher_accuracy']['add']:.3f} after "
                  f"{world['teacher_sft_steps']} steps." + (f" Note: {world['pretrain_note']}"
                                                            if world["pretrain_note"] else ""), ""]
    for section in (precision_section(p), steps_section(p), stages_section(p), acceptance_section(r)):
        lines += [section, ""]
    failed = [f"- {name}: {part['error']}" for name, part in p.items() if "error" in part]
    if failed:
        lines += ["## Parts that failed", "", *failed, ""]
    lines += ["## Wall time per part", "", "| part | seconds |", "| --- | ---: |",
              *[f"| {name} | {sec:.0f} |" for name, sec in r["part_seconds"].items()]]
    return "\n".join(lines)


def precision_section(p: dict) -> str:
    d, b = p["distill"], p["bf16"]
    if "error" in d or "error" in b:
        return "## Precision check\n\nNot measured: a part failed (below)."
    add = d["forgetting_suite"]["suites"]["add"]
    return "\n".join([
        f"## Precision check: distillation at lr {d['learning_rate']:g}, {d['steps']} steps x "
        f"{d['prompts_per_step']} prompts", "",
        f"`add` on the forgetting suite's {add['n']} items: champion {add['champion']:.3f}.", "",
        "| student as loaded | weights that changed | relative L1 change | `add` after |",
        "| --- | ---: | ---: | ---: |",
        f"| bf16 weights (how a GPU loaded the student before), bf16 autocast {b['bf16_autocast']} | "
        f"{b['changed_fraction']:.2%} | {b['relative_l1']:.2e} | {b['add_after']:.3f} |",
        f"| the stage's own loading: fp32 master weights, precision {d['precision']} | {d['changed_fraction']:.2%} | "
        f"{d['relative_l1']:.2e} | {add['candidate']:.3f} (delta {add['delta']:+.3f}, 95% CI "
        f"[{add['ci_low']:+.3f}, {add['ci_high']:+.3f}]) |"])


def steps_section(p: dict) -> str:
    lines = ["## Step time (routed trainer vs TRL's stock trainer vs irreducible passes, `model.generate` rollouts)",
             "", "| shape | routed s/step | stock s/step | routed / stock | irreducible: generation + teacher fwd + "
                 "student fwd/bwd = sum | routed / irreducible | routed step split: generation, teacher fwd, rest | "
                 "sampled tokens/s | peak memory (routed) |",
             "| --- | ---: | ---: | ---: | --- | ---: | --- | ---: | --- |"]
    for name in ("steps-short", "steps-long"):
        s = p[name]
        if "error" in s:
            lines.append(f"| {name} | failed | | | | | | | |")
            continue
        q, sp = s["passes_seconds"], s["routed_split"]
        lines.append(
            f"| {s['rows_per_step']} prompts x {s['max_completion_length']} tokens"
            f"{' (full length)' if s['full_length'] else ''} | {s['routed_step_seconds']:.3f} | "
            f"{s['stock_step_seconds']:.3f} | **{s['routed_over_stock']:.2f}** | {q['generation']:.3f} + "
            f"{q['teacher_forward']:.3f} + {q['student_forward_backward']:.3f} = {s['irreducible_seconds']:.3f} | "
            f"**{s['routed_over_irreducible']:.2f}** | {sp['generation']:.3f}, {sp['teacher_forward']:.3f}, "
            f"{sp['student_and_optimizer']:.3f} | {sp['sampled_tokens_per_second']:.0f} | "
            f"{_memory(s['routed_peak_memory'])} |")
    v, long = p["vllm"], p["steps-long"]
    if "skipped" in v:
        lines += ["", f"vLLM rollouts: not measured ({v['skipped']})."]
    elif "error" in v:
        lines += ["", f"vLLM rollouts: {v['error']}."]
    else:
        gen = long.get("routed_split", {}).get("sampled_tokens_per_second")
        vt = v["routed_split"]["sampled_tokens_per_second"]
        lines += ["", f"vLLM rollouts (colocated, {v['vllm_gpu_memory_utilization']:.0%} of GPU memory), same long "
                      f"shape: {vt:.0f} sampled tokens/s against {_f(gen, '.0f')} with `model.generate` "
                      f"(**{_f(vt / gen if gen else None, '.1f')}x**); routed step {v['routed_step_seconds']:.3f} s; "
                      f"peak {_memory(v['peak_memory'])}."]
    return "\n".join(lines)


def stages_section(p: dict) -> str:
    t, d = p["teacher"], p["distill"]
    lines = ["## The stages on this device", "",
             "| stage | precision | rollouts | steps | train s | sampled tokens per training second | peak memory | "
             "result |", "| --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    if "error" not in t:
        lines.append(f"| teacher (GRPO, lr {t['learning_rate']:g}, {t['completions_per_step']} completions/step) | "
                     f"{t['precision']} | {t['rollouts']} | {_f(t['steps'], '.0f')} | {t['train_seconds']:.1f} | "
                     f"{t['sampled_tokens_per_training_second']:.0f} | {_memory(t['peak_memory'])} | add "
                     f"{_f(t['initial_accuracy'])} -> {_f(t['accuracy'])}; gate {t['outcome'][:60]} |")
    if "error" not in d:
        fs = d["forgetting_suite"]
        lines.append(f"| distillation (routed opd, lr {d['learning_rate']:g}) | {d['precision']} | {d['rollouts']} | "
                     f"{d['steps']} | {d['train_seconds']:.1f} | {d['sampled_tokens_per_training_second']:.0f} | "
                     f"{_memory(d['peak_memory'])} | see the precision check |")
        lines += ["", f"Forgetting suite (both models frozen, {fs['seconds']:.1f} s, {_memory(fs['peak_memory'])}, "
                      f"drift/kl_core {_f(fs['kl_core'], '.4f')}):", "",
                  "| suite | champion | candidate | delta | 95% CI |", "| --- | ---: | ---: | ---: | --- |",
                  *[f"| {n} | {s['champion']:.3f} | {s['candidate']:.3f} | {s['delta']:+.3f} | "
                    f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}] |" for n, s in fs["suites"].items()]]
    return "\n".join(lines)


def acceptance(r: dict) -> list[tuple[str, str]]:
    """(criterion, verdict) for what the GPU run must show; a smoke run shows nothing."""
    p = r["parts"]
    out = []
    d = p["distill"]
    if "error" in d:
        out.append(("the student learns at lr 1e-6 (weights move, add rises)", "not measured"))
    else:
        add = d["forgetting_suite"]["suites"]["add"]
        ok = d["changed_fraction"] > 0.9 and add["delta"] > 0
        out.append(("the student learns at lr 1e-6 (weights move, add rises)",
                    f"{'met' if ok else 'NOT met'}: {d['changed_fraction']:.1%} moved, add {add['delta']:+.3f}"))
    ratios = [p[n]["routed_over_stock"] for n in ("steps-short", "steps-long") if "error" not in p[n]]
    out.append(("routed / stock <= 1.15", "not measured" if not ratios else
                f"{'met' if max(ratios) <= 1.15 else 'NOT met'}: " + ", ".join(f"{x:.2f}" for x in ratios)))
    v, long = p["vllm"], p["steps-long"]
    criterion = "vLLM >= 3x the sampled tokens/s of model.generate"
    if "skipped" in v or "error" in v or "error" in long:
        out.append((criterion, f"not measured ({v.get('skipped') or 'a part failed'})"))
    else:
        ratio = v["routed_split"]["sampled_tokens_per_second"] / long["routed_split"]["sampled_tokens_per_second"]
        out.append((criterion, f"{'met' if ratio >= 3 else 'NOT met'}: {ratio:.1f}x"))
    return out


def acceptance_section(r: dict) -> str:
    head = "## What the GPU run must show" + (" (a CPU smoke run cannot show it)" if r["smoke"] else "")
    return "\n".join([head, "", "| criterion | verdict |", "| --- | --- |",
                      *[f"| {c} | {v} |" for c, v in acceptance(r)]])


if __name__ == "__main__":
    raise SystemExit(main())
