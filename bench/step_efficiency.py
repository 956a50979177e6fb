"""Time per step of the routed distillation trainer, against TRL's stock trainer and its irreducible passes.

Measured side by side in one process, on one thread, with the stage's default settings (256 rows a step,
a quarter of them core replay, 8-token completions) and the same rows for every measurement:

- routed: `tasks.routed_distillation.RoutedDistillationTrainer` as the stage builds it (two teachers);
- stock: TRL's `DistillationTrainer` on the same rows and arguments with one teacher for every row (plus the
  routed trainer's autocast fix, `AutocastDistillationTrainer`, so under mixed precision both run the loss in
  bf16; in fp32 it is TRL's trainer unchanged);
- irreducible passes, timed separately on the same rows: sampling completions from the student
  (`generate`), the teachers' forwards on their own rows (no grad), and the student's forward and backward
  of a full-vocabulary reverse KL. Their sum is what any implementation must spend; the rest of a step is
  the trainer's overhead (batching, padding, chunked loss, optimizer step, logging).

Step times are wall-clock from a callback (`on_step_begin` to `on_step_end`), the median after warm-up; on a
GPU every timer waits for the device first. `measure_trainers` also splits the routed trainer's own steps
(time in generation and in teacher forwards, the rest being the student's forward, backward and optimizer
step) and counts the tokens it sampled; `bench/gpu.py` uses it at GPU sizes.
"""

import argparse
import contextlib
import json
import shutil
import statistics
import time
from pathlib import Path

from bench.grid import SINGLE_UPDATE
from continual_opd.compute import DEFAULT_COMPUTE, ComputeConfig, bf16_autocast
from continual_opd.home import current_home, prepare_stores
from continual_opd.modelio import load_model, pick_device
from continual_opd.records import ModelRef, Teacher
from continual_opd.training import attach
from demo_world.bootstrap import bootstrap
from demo_world.skills import CATALOGUE
from tasks.distill_config import ANCHOR_ROUTE, TARGET_ROUTE, DistillConfig
from tasks import routed_distillation
from tasks.distill_training import routed_trainer, training_rows
from tasks.evaluate import completion_logprobs, sample_from_champion

WARMUP, MEASURED = 2, 8


def sync() -> None:
    """Wait for the GPU (if any), so a wall-clock reading includes the work queued before it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _step_timer():
    """A trainer callback that records each optimizer step's wall time (`on_step_begin` to `on_step_end`)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.seconds.append(time.perf_counter() - self._t)

    return StepTimer()


def _median_after_warmup(seconds: list[float], warmup: int = WARMUP) -> float:
    return statistics.median(seconds[warmup:])


def measure(home, steps: int = WARMUP + MEASURED) -> dict:
    """Seconds per step of each trainer and of each irreducible pass, and the ratios between them.

    The teacher is a second copy of the base: a forward pass costs the same whatever the weights, and
    timing needs no trained teacher (the step-0 KL guard is the stage's, not the trainer's, and is not run).
    """
    champion = bootstrap(home)
    teacher = Teacher(model=ModelRef(name="bench-teacher", version="0", folder=champion.folder), skill="add",
                      initial_accuracy=0.0, accuracy=0.0, steps=0)
    cfg = DistillConfig(steps=steps, eval_every=steps, checkpoint_every=10 * steps, **SINGLE_UPDATE)
    return measure_trainers(champion, teacher, cfg, home.root / "bench" / "step-efficiency")


def measure_trainers(champion: ModelRef, teacher: Teacher, cfg: DistillConfig, work: Path,
                     compute: ComputeConfig = DEFAULT_COMPUTE, full_length: bool = False,
                     warmup: int = WARMUP) -> dict:
    """`measure` for any champion, teacher, settings and compute; `full_length` makes every completion
    `cfg.max_completion_length` tokens long (EOS suppressed), so sampling throughput is measured at that length."""
    length = cfg.max_completion_length if full_length else None
    routed, routed_seconds, split, routed_memory = time_routed(champion, teacher, cfg, work, compute, length)
    tokenizer = routed.processing_class
    stock_student, _ = load_model(champion.folder)
    stock = routed_distillation.AutocastDistillationTrainer(
        stock_student, load_model(teacher.model.folder, frozen=True, precision=compute.precision)[0],
        args=routed.args, train_dataset=routed.train_dataset, processing_class=tokenizer)
    stock.args.output_dir = str(work / "stock")
    probe_steps(stock, length)
    stock_seconds = _timed(stock)
    shutil.rmtree(work, ignore_errors=True)

    rows = training_rows(_targets(), cfg, CATALOGUE)[:cfg.prompts_per_step]  # one step's rows, replay included
    frozen = dict(frozen=True, precision=compute.precision)
    teachers = {TARGET_ROUTE: load_model(teacher.model.folder, **frozen)[0],
                ANCHOR_ROUTE: load_model(champion.folder, **frozen)[0]}
    passes = _irreducible(load_model(champion.folder)[0], teachers, tokenizer, rows, cfg, compute, length, warmup)
    routed_step, stock_step = (_median_after_warmup(routed_seconds, warmup),
                               _median_after_warmup(stock_seconds, warmup))
    irreducible = sum(passes.values())
    return {
        "rows_per_step": cfg.prompts_per_step, "replay_rows": cfg.replay_per_step,
        "max_completion_length": cfg.max_completion_length, "full_length": full_length, "warmup_steps": warmup,
        "measured_steps": len(routed_seconds) - warmup, "torch_threads": _threads(),
        "routed_step_seconds": routed_step, "stock_step_seconds": stock_step,
        "passes_seconds": passes, "irreducible_seconds": irreducible,
        "routed_over_stock": routed_step / stock_step, "routed_over_irreducible": routed_step / irreducible,
        "stock_over_irreducible": stock_step / irreducible,
        "routed_all_steps": routed_seconds, "stock_all_steps": stock_seconds,
        "routed_split": split.summary(routed_seconds, warmup), "routed_peak_memory": routed_memory,
    }


def _targets():
    return CATALOGUE["add"].items("train", 2048, seed=5)


def _timed(trainer) -> list[float]:
    timer = _step_timer()
    attach(trainer, [timer]).train()
    return timer.seconds


def time_routed(champion: ModelRef, teacher: Teacher, cfg: DistillConfig, work: Path,
                compute: ComputeConfig = DEFAULT_COMPUTE, length: int | None = None):
    """The routed trainer as the stage builds it, trained `cfg.steps` steps on `add` rows with replay: returns
    (trainer, seconds per step, `probe_steps` split, peak memory)."""
    student, tokenizer = load_model(champion.folder)
    routed = routed_trainer(student, tokenizer, _targets(), champion, teacher, cfg, CATALOGUE, work / "routed",
                            compute=compute)
    split = probe_steps(routed, length)
    with peak_memory() as memory:
        seconds = _timed(routed)
    return routed, seconds, split, memory


def probe_steps(trainer, length: int | None = None):
    """Time a distillation trainer's generation and teacher forwards per step and count its sampled tokens.

    Wraps the instance's `_generate_single_turn` (rollouts with `model.generate` or vLLM, weight sync included)
    and, on the routed trainer, `_teacher_hidden_states`. With `length`, EOS is suppressed until `length`
    tokens (the demo skills' answers end after a few tokens).
    """
    if length:
        trainer.generation_config.min_new_tokens = length
        if getattr(trainer, "vllm_generation", None) is not None:
            trainer.vllm_generation.generation_kwargs["min_tokens"] = length

    class Split:
        def __init__(self):
            self.generation, self.teacher, self.tokens = [0.0], [0.0], [0]

        def wrap(self, name, into, count=None):
            inner = getattr(trainer, name)

            def timed(*args, **kwargs):
                sync()
                t = time.perf_counter()
                out = inner(*args, **kwargs)
                sync()
                into[-1] += time.perf_counter() - t
                if count:
                    self.tokens[-1] += count(out)
                return out

            setattr(trainer, name, timed)

        def summary(self, step_seconds: list[float], warmup: int) -> dict:
            steps = len(step_seconds) - warmup
            gen, teacher = sum(self.generation[warmup:warmup + steps]), sum(self.teacher[warmup:warmup + steps])
            tokens = sum(self.tokens[warmup:warmup + steps])
            total = sum(step_seconds[warmup:])
            return {"generation": gen / steps, "teacher_forward": teacher / steps,
                    "student_and_optimizer": (total - gen - teacher) / steps, "tokens_sampled": tokens / steps,
                    "sampled_tokens_per_second": tokens / gen if gen else float("nan"),
                    "rollouts": "vllm" if trainer.use_vllm else "generate"}

    split = Split()
    split.wrap("_generate_single_turn", split.generation, count=lambda ids: sum(len(c) for c in ids))
    if hasattr(trainer, "_teacher_hidden_states"):
        split.wrap("_teacher_hidden_states", split.teacher)

    from transformers import TrainerCallback

    class NextStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            split.generation.append(0.0)
            split.teacher.append(0.0)
            split.tokens.append(0)

    trainer.add_callback(NextStep())
    return split


@contextlib.contextmanager
def peak_memory():
    """Yields a dict that receives the peak memory of the block: GPU allocated/reserved GiB, or the process's
    peak resident set (MiB, since the process started) on a CPU."""
    import resource

    import torch

    out: dict = {}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    yield out
    if torch.cuda.is_available():
        out.update(device="cuda", allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                   reserved_gib=torch.cuda.max_memory_reserved() / 2**30)
    else:
        out.update(device="cpu", peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


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
        f"| stock TRL `DistillationTrainer` (1 teacher, same autocast) | {r['stock_step_seconds']:.3f} | "
        f"routed / stock = **{r['routed_over_stock']:.2f}** |",
        f"| irreducible: student generation | {p['generation']:.3f} | |",
        f"| irreducible: teacher forwards (each on its rows) | {p['teacher_forward']:.3f} | |",
        f"| irreducible: student forward + backward | {p['student_forward_backward']:.3f} | |",
        f"| irreducible: sum | {r['irreducible_seconds']:.3f} | routed / irreducible = "
        f"**{r['routed_over_irreducible']:.2f}**; stock / irreducible = {r['stock_over_irreducible']:.2f} |",
    ])


def _irreducible(student, teachers: dict, tokenizer, rows: list[dict], cfg, compute: ComputeConfig = DEFAULT_COMPUTE,
                 length: int | None = None, warmup: int = WARMUP) -> dict[str, float]:
    """Seconds of each irreducible pass on `rows` (median of MEASURED repeats after `warmup`), at the trainers'
    precision (bf16 autocast over the fp32 student, frozen teachers as loaded); `length` as in `probe_steps`."""
    import torch

    device = pick_device()
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                              enabled=bf16_autocast(compute.precision, device))
    student.generation_config.min_new_tokens = length

    prompts = [r["prompt"] for r in rows]
    by_route: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_route.setdefault(r["route"], []).append(i)
    times: dict[str, list[float]] = {"generation": [], "teacher_forward": [], "student_forward_backward": []}
    for repeat in range(warmup + MEASURED):
        sync()
        t0 = time.perf_counter()
        with autocast:
            (batch,) = sample_from_champion(student, tokenizer, prompts, cfg.max_completion_length, seed=repeat,
                                            batch_size=len(prompts))
        sync()
        t1 = time.perf_counter()
        with torch.no_grad(), autocast:
            parts = {}
            for route, idx in by_route.items():
                sub = {**batch, **{k: batch[k][idx] for k in ("seq", "attention", "positions", "keep")}}
                parts[route] = (idx, completion_logprobs(teachers[route], sub))
        sync()
        t2 = time.perf_counter()
        student.train()
        with autocast:
            logq = completion_logprobs(student, batch)
        logp = torch.empty_like(logq)
        for idx, lp in parts.values():
            logp[idx] = lp
        keep = batch["keep"].float()
        loss = ((logq.exp() * (logq - logp)).sum(-1) * keep).sum() / keep.sum()
        loss.backward()
        student.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        times["generation"].append(t1 - t0)
        times["teacher_forward"].append(t2 - t1)
        times["student_forward_backward"].append(t3 - t2)
    return {k: _median_after_warmup(v, warmup) for k, v in times.items()}


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
