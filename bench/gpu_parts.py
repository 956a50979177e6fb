"""The parts of the GPU benchmark, each run in its own process by `bench/gpu.py` on the world of `bench.gpu_world`.

- `teacher`: the teacher stage (`tasks.teacher_rl.train_teacher`, GRPO with the stage's rollouts);
- `distill`: the precision check's stage arm, the distillation stage (`tasks.distill.distill`) at lr 1e-6 with
  its own loading, then the forgetting suite (`tasks.evaluate.evaluate`) on its candidate;
- `bf16`: the precision check's failure arm, the same routed trainer and settings on a student whose weights
  are bf16 (how a GPU loaded the student before);
- `steps-short`, `steps-long`: step time of the routed trainer against TRL's stock trainer and the irreducible
  passes, with `model.generate` rollouts (`bench.step_efficiency.measure_trainers`);
- `vllm`: the routed trainer's rollouts with vLLM at the long shape (skipped when vLLM or CUDA is missing).
"""

from pathlib import Path

from bench.gpu_world import Sizes, load_world
from bench.grid import SINGLE_UPDATE
from bench.step_efficiency import measure_trainers, peak_memory, time_routed
from continual_opd import registry
from continual_opd.batch_io import load_batch
from continual_opd.compute import ComputeConfig
from continual_opd.decoding import skill_accuracy
from continual_opd.home import current_home
from continual_opd.modelio import load_model
from continual_opd.suites import build_suites
from continual_opd.training import attach, use_vllm
from demo_world.skills import CATALOGUE
from tasks.distill import distill
from tasks.distill_config import DistillConfig
from tasks.distill_training import routed_trainer
from tasks.evaluate import EvalConfig, evaluate
from tasks.teacher_rl import TeacherConfig, TeacherGateFailed, train_teacher

CHECK_LR = 1e-6  # the learning rate of the precision check: TRL's default, and what real models train at


def check_config(sizes: Sizes) -> DistillConfig:
    """The precision check's distillation settings, the same for both arms."""
    return DistillConfig(steps=sizes.check_steps, prompts_per_step=sizes.check_prompts, learning_rate=CHECK_LR,
                         eval_every=sizes.check_steps, eval_items=sizes.accuracy_items,
                         checkpoint_every=10 * sizes.check_steps, registered_model="bench-gpu-student", **SINGLE_UPDATE,
                         # no guard was measured on this world's supervised teacher (the CPU smoke's is barely trained)
                         max_reference_nll=50.0)


def weight_change(before: dict, after: dict) -> dict[str, float]:
    """Share of weights whose value changed, and the L1 norm of the change over that of the weights."""
    changed = moved = norm = 0.0
    count = 0
    for name, old in before.items():
        new = after[name].detach().to(old.device, old.dtype)
        changed += float((new != old).sum())
        moved += float((new.float() - old.float()).abs().sum())
        norm += float(old.float().abs().sum())
        count += old.numel()
    return {"changed_fraction": changed / count, "relative_l1": moved / norm}


def folder_weights(folder: str | Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(path))
    return out


def teacher_part(work: Path, sizes: Sizes) -> dict:
    """The teacher stage on the world's base, with the stage's rollouts and precision (`auto`)."""
    world, champion, _, batch = load_world(work)
    cfg = TeacherConfig(steps=sizes.teacher_stage_steps, prompts_per_step=sizes.teacher_stage_prompts,
                        learning_rate=sizes.teacher_stage_lr, eval_every=max(1, sizes.teacher_stage_steps // 3),
                        eval_items=sizes.accuracy_items, gate_items=sizes.accuracy_items, gate_margin=0.0,
                        early_stop_accuracy=1.0, warm_start={"settings": {"steps": sizes.teacher_warm_start_steps}},
                        registered_model="bench-gpu-teacher")
    outcome = "passed"
    with peak_memory() as memory:
        try:
            run_id = train_teacher(batch, champion, cfg, CATALOGUE, current_home()).run_id
        except TeacherGateFailed as exc:  # a measurement of the stage, not of teachers: record it and go on
            outcome, run_id = f"gate failed: {exc}", exc.run_id
    run = registry.client().get_run(run_id)
    metrics, params = run.data.metrics, run.data.params
    history = registry.client().get_metric_history(run_id, "step_seconds")
    step_seconds = sorted(m.value for m in history)
    return {"outcome": outcome, "steps": metrics.get("teacher/steps"),
            "train_seconds": metrics["teacher/train_seconds"],
            "completions_per_step": cfg.completions_per_step, "tokens_sampled": metrics["teacher/tokens_sampled"],
            "sampled_tokens_per_training_second": metrics["teacher/tokens_sampled"] / metrics["teacher/train_seconds"],
            "median_step_seconds": step_seconds[len(step_seconds) // 2] if step_seconds else None,
            "initial_accuracy": metrics.get("teacher/initial_accuracy"), "accuracy": metrics.get("teacher/accuracy"),
            "precision": params.get("compute.precision"), "rollouts": params.get("compute.rollouts"),
            "peak_memory": memory, "learning_rate": cfg.learning_rate}


def distill_part(work: Path, sizes: Sizes) -> dict:
    """The distillation stage at lr 1e-6 with its own loading, then the forgetting suite on its candidate."""
    import time

    world, champion, teacher, batch = load_world(work)
    cfg = check_config(sizes)
    counter = _token_counter()
    with peak_memory() as memory:
        candidate = distill(batch, champion, teacher, cfg, CATALOGUE, current_home(), callbacks=[counter])
    change = weight_change(folder_weights(champion.folder), folder_weights(candidate.model.folder))
    started = time.perf_counter()
    with peak_memory() as eval_memory:
        report = evaluate(champion, candidate, "add", EvalConfig(suite_size=sizes.suite_size,
                                                                 kl_prompts=sizes.kl_prompts), CATALOGUE,
                          current_home())
    params = registry.client().get_run(candidate.run_id).data.params
    return {"learning_rate": cfg.learning_rate, "steps": cfg.steps, "prompts_per_step": cfg.prompts_per_step,
            **change, "train_seconds": candidate.metrics["train_seconds"], "tokens_sampled": counter.tokens,
            "sampled_tokens_per_training_second": counter.tokens / candidate.metrics["train_seconds"],
            "precision": params.get("compute.precision"), "rollouts": params.get("compute.rollouts"),
            "peak_memory": memory, "forgetting_suite": {
                "seconds": time.perf_counter() - started, "peak_memory": eval_memory, "kl_core": report.kl_core,
                "suites": {name: {"n": s.n, "champion": s.champion_acc, "candidate": s.candidate_acc, "delta": s.delta,
                                  "ci_low": s.delta_ci_low, "ci_high": s.delta_ci_high}
                           for name, s in report.suites.items()}}}


def bf16_part(work: Path, sizes: Sizes) -> dict:
    """The same run on bf16 weights: what the stage did before trained weights were kept in fp32."""
    import torch

    world, champion, teacher, batch = load_world(work)
    cfg = check_config(sizes)
    student, tokenizer = load_model(champion.folder, dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    trainer = routed_trainer(student, tokenizer, load_batch(batch.path), champion, teacher, cfg, CATALOGUE,
                             work / "bf16-trainer")
    with peak_memory() as memory:
        attach(trainer).train()
    model = trainer.model
    change = weight_change(before, dict(model.named_parameters()))
    items = build_suites(CATALOGUE, ["add"], sizes.suite_size)["add"]  # the forgetting suite's add items
    accuracy, _ = skill_accuracy(model, tokenizer, items, CATALOGUE["add"].verify)
    return {"learning_rate": cfg.learning_rate, "steps": cfg.steps, **change, "add_after": accuracy,
            "bf16_autocast": bool(trainer.args.bf16), "peak_memory": memory}


def steps_part(work: Path, sizes: Sizes, shape: str) -> dict:
    """Step time at one shape with `model.generate` rollouts, routed vs stock vs irreducible."""
    world, champion, teacher, _ = load_world(work)
    prompts, tokens = sizes.short if shape == "short" else sizes.long
    cfg = DistillConfig(steps=sizes.warmup_steps + sizes.measured_steps, prompts_per_step=prompts,
                        max_completion_length=tokens, learning_rate=1e-5, eval_every=1000, checkpoint_every=1000,
                        **SINGLE_UPDATE)
    return measure_trainers(champion, teacher, cfg, work / f"steps-{shape}", ComputeConfig(rollouts="generate"),
                            full_length=shape == "long", warmup=sizes.warmup_steps)


def vllm_part(work: Path, sizes: Sizes) -> dict:
    """The routed trainer's rollouts with vLLM (colocated), at the long shape, full-length completions."""
    compute = ComputeConfig(rollouts="vllm", vllm_max_model_length=sizes.shape["positions"])
    try:
        use_vllm(compute)
    except ValueError as exc:
        return {"skipped": str(exc)}
    world, champion, teacher, _ = load_world(work)
    prompts, tokens = sizes.long
    cfg = DistillConfig(steps=sizes.warmup_steps + sizes.measured_steps, prompts_per_step=prompts,
                        max_completion_length=tokens, learning_rate=1e-5, eval_every=1000, checkpoint_every=1000,
                        **SINGLE_UPDATE)
    _, seconds, split, memory = time_routed(champion, teacher, cfg, work / "vllm", compute, length=tokens)
    steps = seconds[sizes.warmup_steps:]
    return {"routed_step_seconds": sorted(steps)[len(steps) // 2], "routed_split": split.summary(seconds,
                                                                                                sizes.warmup_steps),
            "peak_memory": memory, "vllm_gpu_memory_utilization": compute.vllm_gpu_memory_utilization}


def _token_counter():
    """A callback summing the routed trainer's `tokens_sampled` log (one log per step)."""
    from transformers import TrainerCallback

    class Tokens(TrainerCallback):
        tokens = 0.0

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.tokens += float((logs or {}).get("tokens_sampled", 0.0))

    return Tokens()


PARTS = {"teacher": teacher_part, "distill": distill_part, "bf16": bf16_part,
         "steps-short": lambda work, sizes: steps_part(work, sizes, "short"),
         "steps-long": lambda work, sizes: steps_part(work, sizes, "long"), "vllm": vllm_part}
