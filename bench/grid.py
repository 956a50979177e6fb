"""Seeds x methods: one RL teacher per seed, then every method from the same base and teacher, equal budgets.

Each seed trains its own teacher with the teacher stage (`tasks.teacher_rl`, a different seed each), then
runs every method of the distillation stage (`tasks.distill`) from the same base with that teacher, the
same steps, prompts per step and completion length. Everything goes through the stages' public functions,
so the benchmark measures the code the flow runs. The base is the demo world's pretrained base, shared by
all seeds (pretraining one per seed would cost 5 minutes each); seeds vary the teacher, the data order,
sampling and initialisation of everything trained here.
"""

import argparse
import json
import time
from pathlib import Path

from pydantic import Field

from bench.probe import Probe
from continual_opd.batch_io import batch_digest, load_batch, write_jsonl
from continual_opd.config import StrictConfig
from continual_opd.decoding import greedy_complete
from continual_opd.home import current_home, prepare_stores
from continual_opd.modelio import load_model
from continual_opd.records import AcceptedBatch
from demo_world.bootstrap import bootstrap
from demo_world.skills import CATALOGUE, CORE_SKILLS, SKILLS
from tasks.distill import distill
from tasks.distill_config import TEMPERATURE, DistillConfig
from tasks.distill_training import training_rows
from tasks.teacher_rl import TeacherConfig, train_teacher

METHODS = ("opd", "opd_no_replay", "sft_teacher_samples", "grpo")
# The single-update recipe that the grid, the step-efficiency and the GPU parts measure: reverse KL (beta 1), a
# quarter of each step core replay, a fixed step budget (no cold-target rule). The continual defaults (forward KL
# on targets, half replay) are measured by bench.continual and bench.ablation.
SINGLE_UPDATE = {"beta": 1.0, "replay_fraction": 0.25, "cold_target": {"below": 0.0}}


class GridConfig(StrictConfig):
    seeds: tuple[int, ...] = Field((0, 1, 2), description="Seeds; each trains its own teacher.")
    methods: tuple[str, ...] = Field(METHODS, description="Distillation-stage methods to compare.")
    steps: int = Field(100, ge=1, description="Optimizer steps per method (equal budgets).")
    prompts_per_step: int = Field(256, ge=8, description="Completions sampled per step, every method.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate of the distillation methods.")
    grpo_learning_rate: float = Field(1e-4, gt=0, description="grpo's learning rate: 1e-3 collapsed the student "
                                                              "(measured), so it gets its best measured one.")
    teacher_steps: int = Field(300, ge=1, description="Most GRPO steps of each seed's teacher (early stopping).")
    teacher_gate_margin: float = Field(0.10, ge=0, description="The teacher stage's gate margin (0 for smoke runs).")
    batch_rows: int = Field(2048, ge=64, description="Rows of the add batch (the demo's batch size).")
    probe_every: int = Field(10, ge=1, description="Probe every this many steps.")
    probe_items: int = Field(300, ge=20, description="Held-out items per skill at each probe.")
    kl_prompts: int = Field(128, ge=8, description="Core prompts sampled from the base for drift/kl_core.")


def run_grid(cfg: GridConfig, home, out: Path, log=print) -> dict:
    """Train and probe every (seed, method); returns {"seeds": [...]} and rewrites the JSON file `out` as it goes."""
    import torch


    champion = bootstrap(home)
    base_model, tokenizer = load_model(champion.folder)
    result = {"config": cfg.model_dump(), "champion": champion.model_dump(), "seeds": []}
    for seed in cfg.seeds:
        torch.manual_seed(seed)
        batch = _batch(home, seed, cfg.batch_rows)
        started = time.perf_counter()
        teacher = _teacher(batch, champion, cfg, seed, home)
        teacher_seconds = time.perf_counter() - started
        eval_sets, kl_prompts = _probe_sets(cfg, seed)
        teacher_model, _ = load_model(teacher.model.folder)
        teacher_point = _probe(base_model, tokenizer, eval_sets, kl_prompts, cfg, 1).measure(teacher_model, 0)
        entry = {"seed": seed, "teacher": {**teacher.model_dump(), "seconds": teacher_seconds,
                                           "probe": teacher_point, "curve": teacher_curve(teacher.run_id)},
                 "runs": {}}
        log(f"seed {seed}: teacher add {teacher.initial_accuracy:.3f} -> {teacher.accuracy:.3f} (gate set), "
            f"{teacher_point['acc/add']:.3f} on the probe set, {teacher_seconds:.0f}s")
        for method in cfg.methods:
            entry["runs"][method] = _run_method(method, batch, champion, teacher, cfg, seed, home, base_model,
                                                tokenizer, eval_sets, kl_prompts)
            last = entry["runs"][method]["points"][-1]
            log(f"seed {seed} {method}: add {last['acc/add']:.3f}, kl_core {last['kl_core']:.4f}, "
                f"{last['train_seconds']:.0f}s")
        result["seeds"].append(entry)
        out.write_text(json.dumps(result, indent=1))
    return result


def teacher_curve(run_id: str, tracking_uri: str | None = None) -> list[dict]:
    """The teacher stage's own GRPO curve: held-out add accuracy at each evaluation, with tokens sampled so far.

    The teacher is GRPO from the same base the student starts from, with the teacher stage's tuned recipe, so
    its curve is "RL on the student" at its best measured settings (the `grpo` method runs at the distillation
    budget instead). Read back from the stage's MLflow run: `heldout/add_acc` (its selection set) and
    `rl/completions/mean_length` x completions per step.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    per_step = int(run.data.params.get("cfg.prompts_per_step", TeacherConfig().prompts_per_step)) * int(
        run.data.params.get("cfg.num_generations", TeacherConfig().num_generations))
    lengths = {m.step: m.value for m in client.get_metric_history(run_id, "rl/completions/mean_length")}
    curve, tokens, counted = [], 0.0, 0
    for m in sorted(client.get_metric_history(run_id, "heldout/add_acc"), key=lambda m: m.step):
        tokens += sum(lengths.get(s, 0.0) for s in range(counted + 1, m.step + 1)) * per_step
        counted = m.step
        curve.append({"step": m.step, "acc/add": m.value, "student_tokens": tokens})
    return curve


def _batch(home, seed: int, rows: int):

    items = SKILLS["add"].items("train", rows, seed=2000 + seed)
    path = write_jsonl(items, home.root / "bench" / f"add-seed{seed}.jsonl")
    return AcceptedBatch(path=str(path), digest=batch_digest(items), skill="add", rows=rows,
                         contract_version="bench")


def _teacher(batch, champion, cfg: GridConfig, seed: int, home):

    return train_teacher(batch, champion, TeacherConfig(seed=seed, steps=cfg.teacher_steps,
                                                       gate_margin=cfg.teacher_gate_margin), CATALOGUE, home)


def _probe_sets(cfg: GridConfig, seed: int):
    """Held-out items per skill (the same for every method of a seed) and core prompts for drift/kl_core."""
    eval_sets = {s: SKILLS[s].items("heldout", cfg.probe_items, seed=3000 + seed) for s in ("add", *CORE_SKILLS)}
    per_core = cfg.kl_prompts // len(CORE_SKILLS)
    kl_prompts = [it.prompt for c in CORE_SKILLS for it in SKILLS[c].items("heldout", per_core, seed=4000 + seed)]
    return eval_sets, kl_prompts


def _probe(base_model, tokenizer, eval_sets, kl_prompts, cfg: GridConfig, completions_per_step: int):

    return Probe(base_model=base_model, tokenizer=tokenizer, eval_sets=eval_sets, kl_prompts=kl_prompts,
                 every=cfg.probe_every, completions_per_step=completions_per_step)


def method_config(method: str, cfg: GridConfig, seed: int):

    lr = cfg.grpo_learning_rate if method == "grpo" else cfg.learning_rate
    return DistillConfig(method=method, steps=cfg.steps, prompts_per_step=cfg.prompts_per_step, learning_rate=lr,
                         **SINGLE_UPDATE, seed=seed, eval_every=cfg.steps, eval_items=20, checkpoint_every=cfg.steps,
                         registered_model="continual-opd-bench-student")


def _run_method(method, batch, champion, teacher, cfg: GridConfig, seed, home, base_model, tokenizer, eval_sets,
                kl_prompts) -> dict:

    dcfg = method_config(method, cfg, seed)
    probe = _probe(base_model, tokenizer, eval_sets, kl_prompts, cfg, cfg.prompts_per_step)
    started = time.perf_counter()
    candidate = distill(batch, champion, teacher, dcfg, CATALOGUE, home, callbacks=[probe])
    run = {"config": dcfg.model_dump(), "candidate": candidate.model.version, "points": probe.points,
           "stage_seconds": time.perf_counter() - started}
    if method == "sft_teacher_samples":
        run["teacher_tokens"] = _teacher_sample_tokens(teacher, tokenizer, batch, dcfg)
    return run


def _teacher_sample_tokens(teacher, tokenizer, batch, dcfg) -> float:
    """Tokens the teacher sampled for sft_teacher_samples (its completions, EOS included), re-sampled the same way."""
    rows = training_rows([it for it in load_batch(batch.path) if it.skill == batch.skill], dcfg, CATALOGUE)
    model, tok = load_model(teacher.model.folder)
    sample = rows[:512]
    outs = greedy_complete(model, tok, [r["prompt"] for r in sample], max_new_tokens=dcfg.max_completion_length,
                           sample=True, temperature=TEMPERATURE, seed=dcfg.seed)
    mean = sum(min(len(tok(o, add_special_tokens=False)["input_ids"]) + 1, dcfg.max_completion_length)
               for o in outs) / len(outs)
    return mean * len(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grid", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="GridConfig as JSON")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # one core per benchmark lane: oversubscribed threads made training 20x slower
    run_grid(GridConfig.model_validate_json(args.config), prepare_stores(current_home()), args.out,
             log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
