"""Time per step of the routed distillation trainer, against TRL's stock trainer and its irreducible passes.

Measured side by side in one process, on one thread, with the stage's default settings (256 rows a step,
a quarter of them core replay, 8-token completions) and the same rows for every measurement:

- routed: `tasks.routed_distillation.RoutedDistillationTrainer` as the stage builds it (two teachers);
- stock: TRL's `DistillationTrainer` on the same rows and arguments with one teacher for every row;
- irreducible passes, timed separately on the same rows: sampling completions from the student
  (`generate`), the teachers' forwards on their own rows (no grad), and the student's forward and backward
  of a full-vocabulary reverse KL. Their sum is what any implementation must spend; the rest of a step is
  the trainer's overhead (batching, padding, chunked loss, optimizer step, logging).

Step times are wall-clock from a callback (`on_step_begin` to `on_step_end`), the median after warm-up.
"""

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from continual_opd.home import current_home, prepare_stores
from continual_opd.modelio import load_model
from continual_opd.records import ModelRef, Teacher
from continual_opd.training import attach
from demo_world.bootstrap import bootstrap
from demo_world.skills import CATALOGUE
from tasks.distill_config import ANCHOR_ROUTE, TARGET_ROUTE, DistillConfig
from tasks.distill_training import routed_trainer, training_rows
from tasks.evaluate import completion_logprobs, sample_from_champion

WARMUP, MEASURED = 2, 8


def _step_timer():
    """A trainer callback that records each optimizer step's wall time (`on_step_begin` to `on_step_end`)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._t)

    return StepTimer()


def _median_after_warmup(seconds: list[float]) -> float:
    return statistics.median(seconds[WARMUP:])


def measure(home, steps: int = WARMUP + MEASURED) -> dict:
    """Seconds per step of each trainer and of each irreducible pass, and the ratios between them.

    The teacher is a second copy of the base: a forward pass costs the same whatever the weights, and
    timing needs no trained teacher (the step-0 KL guard is the stage's, not the trainer's, and is not run).
    """
    from trl import DistillationTrainer

    champion = bootstrap(home)
    teacher = Teacher(model=ModelRef(name="bench-teacher", version="0", folder=champion.folder), skill="add",
                      initial_accuracy=0.0, accuracy=0.0, steps=0)
    cfg = DistillConfig(steps=steps, eval_every=steps, checkpoint_every=10 * steps)
    targets = CATALOGUE["add"].items("train", 2048, seed=5)
    work = home.root / "bench" / "step-efficiency"

    def timed(trainer) -> list[float]:
        timer = _step_timer()
        attach(trainer, [timer]).train()
        return timer.seconds

    student, tokenizer = load_model(champion.folder)
    routed = routed_trainer(student, tokenizer, targets, champion, teacher, cfg, CATALOGUE, work / "routed")
    routed_seconds = timed(routed)
    stock_student, _ = load_model(champion.folder)
    stock = DistillationTrainer(stock_student, load_model(teacher.model.folder)[0], args=routed.args,
                                train_dataset=routed.train_dataset, processing_class=tokenizer)
    stock.args.output_dir = str(work / "stock")
    stock_seconds = timed(stock)
    shutil.rmtree(work, ignore_errors=True)

    rows = training_rows(targets, cfg, CATALOGUE)[:cfg.prompts_per_step]  # one step's rows, replay included
    teachers = {TARGET_ROUTE: load_model(teacher.model.folder)[0], ANCHOR_ROUTE: load_model(champion.folder)[0]}
    passes = _irreducible(load_model(champion.folder)[0], teachers, tokenizer,
                          rows, cfg)
    routed_step, stock_step = _median_after_warmup(routed_seconds), _median_after_warmup(stock_seconds)
    irreducible = sum(passes.values())
    return {
        "rows_per_step": cfg.prompts_per_step, "replay_rows": cfg.replay_per_step,
        "max_completion_length": cfg.max_completion_length, "warmup_steps": WARMUP,
        "measured_steps": len(routed_seconds) - WARMUP, "torch_threads": _threads(),
        "routed_step_seconds": routed_step, "stock_step_seconds": stock_step,
        "passes_seconds": passes, "irreducible_seconds": irreducible,
        "routed_over_stock": routed_step / stock_step, "routed_over_irreducible": routed_step / irreducible,
        "stock_over_irreducible": stock_step / irreducible,
        "routed_all_steps": routed_seconds, "stock_all_steps": stock_seconds,
    }


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def markdown(r: dict) -> str:
    p = r["passes_seconds"]
    return "\n".join([
        f"Rows per step: {r['rows_per_step']} ({r['replay_rows']} replay), completions up to "
        f"{r['max_completion_length']} tokens, {r['torch_threads']} torch thread(s), median of "
        f"{r['measured_steps']} steps after {r['warmup_steps']} warm-up steps.",
        "",
        "| measurement | seconds per step | ratio |",
        "| --- | ---: | ---: |",
        f"| routed trainer (2 teachers, per-row routing) | {r['routed_step_seconds']:.3f} | 1.00 |",
        f"| stock TRL `DistillationTrainer` (1 teacher) | {r['stock_step_seconds']:.3f} | "
        f"routed / stock = **{r['routed_over_stock']:.2f}** |",
        f"| irreducible: student generation | {p['generation']:.3f} | |",
        f"| irreducible: teacher forwards (each on its rows) | {p['teacher_forward']:.3f} | |",
        f"| irreducible: student forward + backward | {p['student_forward_backward']:.3f} | |",
        f"| irreducible: sum | {r['irreducible_seconds']:.3f} | routed / irreducible = "
        f"**{r['routed_over_irreducible']:.2f}**; stock / irreducible = {r['stock_over_irreducible']:.2f} |",
    ])


def _irreducible(student, teachers: dict, tokenizer, rows: list[dict], cfg) -> dict[str, float]:
    """Seconds of each irreducible pass on `rows` (median of MEASURED repeats after WARMUP)."""
    import torch

    prompts = [r["prompt"] for r in rows]
    by_route: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_route.setdefault(r["route"], []).append(i)
    times: dict[str, list[float]] = {"generation": [], "teacher_forward": [], "student_forward_backward": []}
    for repeat in range(WARMUP + MEASURED):
        t0 = time.perf_counter()
        (batch,) = sample_from_champion(student, tokenizer, prompts, cfg.max_completion_length, seed=repeat,
                                        batch_size=len(prompts))
        t1 = time.perf_counter()
        with torch.no_grad():
            parts = {}
            for route, idx in by_route.items():
                sub = {**batch, **{k: batch[k][idx] for k in ("seq", "attention", "positions", "keep")}}
                parts[route] = (idx, completion_logprobs(teachers[route], sub))
        t2 = time.perf_counter()
        student.train()
        logq = completion_logprobs(student, batch)
        logp = torch.empty_like(logq)
        for idx, lp in parts.values():
            logp[idx] = lp
        keep = batch["keep"].float()
        loss = ((logq.exp() * (logq - logp)).sum(-1) * keep).sum() / keep.sum()
        loss.backward()
        student.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        times["generation"].append(t1 - t0)
        times["teacher_forward"].append(t2 - t1)
        times["student_forward_backward"].append(t3 - t2)
    return {k: _median_after_warmup(v) for k, v in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.step_efficiency", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    result = measure(prepare_stores(current_home()))
    args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
