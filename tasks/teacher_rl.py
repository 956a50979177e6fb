"""Teacher RL: train a specialist teacher for the batch's skill with GRPO and a verifiable reward.

The teacher starts from the champion (or a given folder or registered version) and is trained with
TRL's `GRPOTrainer` on the batch's prompts; the reward is the skill's verifier applied to the batch's
answers (`tasks.rewards`). Held-out accuracy is measured every `eval_every` steps with the shared
greedy decoder; training stops early at `early_stop_accuracy` and the best checkpoint, not the last,
becomes the teacher. A skill the initial model cannot do at all (held-out accuracy below
the `warm_start` rule) gives GRPO no reward to learn from; such a teacher is first warm-started with supervised
steps on the batch's answers (`tasks.teacher_warm_start`), recorded in its lineage tag `warm_start`.

The teacher gate guards against reward hacking and failed RL: on held-out items that neither training
nor checkpoint selection has seen, the teacher must beat its initial model by `gate_margin`, measured
with the verifier, never with the training reward. A teacher that fails is not saved or registered;
`TeacherGateFailed` stops the update. A teacher already registered for the same skill, data digest,
initial model, rewards and config is reused instead of trained again.

MLflow (a `teacher_rl` run nested under the update's run): params `cfg.*`, the identity (skill, data
digest, initial model, rewards, config hash, registration key); step-indexed curves `heldout/<skill>_acc`
(selection set, step 0 = initial model) and `rl/*` (TRL's logs: `rl/reward`, `rl/rewards/<name>_v<version>/mean`,
`rl/completions/mean_length`, ...); totals `teacher/initial_accuracy` and `teacher/accuracy` (gate set),
`teacher/steps`, `teacher/best_step`, `teacher/tokens_sampled`, `teacher/train_seconds`,
`teacher/wall_seconds`, `teacher_gate/passed`; tag `teacher_gate` = passed | failed.
"""

import shutil
import time
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from continual_opd import registry, rules
from continual_opd.batch_io import load_batch
from continual_opd.compute import DEFAULT_COMPUTE, ComputeConfig, training_precision
from continual_opd.config import StrictConfig
from continual_opd.rules import Rule, check_settings, merged_with
from continual_opd.decoding import answer_tokens, skill_accuracy
from continual_opd.home import Home
from continual_opd.modelio import check_model_folder, load_model, pick_device, save_model_atomic, weights_digest
from continual_opd.prompts import as_trl_prompt
from continual_opd.records import AcceptedBatch, ModelRef, Teacher
from continual_opd.skills import Catalogue
from continual_opd.suites import part_items
from continual_opd.stage_runner import StageRun, StageSpec, Trained, registration_key, run_stage, trained_folder
from continual_opd.tracking import MetricBuffer, stage_run
from continual_opd.training import (attach, compute_params, heldout_callback, micro_batches, rollout_args,
                                    trainer_args)
from tasks.rewards import RewardFunction, exact_match, format_reward
from tasks.teacher_warm_start import warm_start

STAGE = "teacher_rl"
# the modules whose code trains a teacher: a change to any of them trains anew (continual_opd.fingerprint)
TRAINING_CODE = ("tasks.teacher_rl", "tasks.teacher_warm_start", "tasks.rewards", "continual_opd.training",
                 "continual_opd.decoding", "continual_opd.prompts", "continual_opd.supervised",
                 "continual_opd.modelio", "continual_opd.suites", "continual_opd.rules", "continual_opd.stage_runner")
REGISTRY_PREFIX = "registry:"


WARM_START_SETTINGS = {"learning_rate", "steps", "stop_at", "rows_per_step"}  # what the warm_start rule sets
LR_SCHEDULE = "cosine"  # decay over `steps` settles the policy late (a constant rate diverged or plateaued lower)
TEMPERATURE = 1.0
WARM_START = Rule(below=0.05, settings={"learning_rate": 2e-3, "steps": 800, "stop_at": 0.20, "rows_per_step": 48})


class TeacherConfig(StrictConfig):
    """Settings of the teacher RL stage; the defaults are the CPU recipe measured on the demo world.

    Measured on the demo base (add 0.35): a CPU runs out of compute, not steps, so the defaults are the
    setting that gained most per sampled completion: 32 prompts x 8 completions, peak 3e-4 with cosine decay
    over 300 steps; a constant 3e-4 with 16 x 8 diverged, a constant 1e-4 to 2e-4 plateaued lower.
    """

    init: str = Field("champion", description="Initial model: 'champion', a local Hugging Face model folder, "
                                              "or 'registry:NAME/VERSION'.")
    steps: int = Field(300, ge=0, description="Most GRPO steps; early stopping may end sooner.")
    learning_rate: float = Field(3e-4, gt=0, description="Peak learning rate, cosine-decayed over steps (TRL's "
                                                         "default 1e-6 learns nothing on small models).")
    prompts_per_step: int = Field(32, ge=1, description="Batch prompts per GRPO step.")
    num_generations: int = Field(8, ge=2, description="Completions sampled per prompt (the GRPO group size).")
    micro_batch_size: int | None = Field(None, ge=1, description="Completions per forward/backward pass; the "
                                         "gradient accumulates over passes. Must divide prompts_per_step x "
                                         "num_generations; empty = one pass.")
    max_completion_length: int = Field(6, ge=1, description="Most tokens sampled per completion; near the answer "
                                                            "length plus EOS.")
    eval_every: int = Field(25, ge=1, description="Measure selection-set accuracy every this many steps.")
    eval_items: int = Field(200, ge=1, description="Selection-part held-out items for the accuracy curve, early "
                                                   "stopping, the best checkpoint and the warm_start rule.")
    gate_items: int = Field(400, ge=1, description="Gate-part held-out items on which the teacher gate compares "
                                                   "teacher and initial model (no choice reads them).")
    early_stop_accuracy: float = Field(0.95, ge=0, le=1, description="Stop once selection-set accuracy reaches "
                                                                     "this.")
    gate_margin: float = Field(0.10, ge=0, le=1, description="The teacher must beat its initial model's held-out "
                                                             "accuracy by at least this (0.10 = 10 points).")
    warm_start: Rule = Field(default_factory=lambda: WARM_START, description=(
        "Rule for a skill the initial model cannot do (GRPO gets no reward): supervised steps on the batch's "
        "answers first, with these settings: learning_rate, most steps, stop_at selection accuracy, rows_per_step "
        "(given in part, the rest is the default's)."))
    format_reward_weight: float = Field(0.0, ge=0, description="Weight of the well-formed-answer reward (0 = off).")
    seed: int = Field(0, description="Seed of sampling, training and the held-out draw.")
    registered_model: str = Field(registry.TEACHER_MODEL, description="Registered model that receives teachers.")
    trust_remote_code: bool = Field(False, description="Allow model folders that ship their own code (review first).")

    @model_validator(mode="after")
    def _micro_batches_fit(self):
        micro_batches(self.completions_per_step, self.micro_batch_size, "teacher.micro_batch_size",
                      "teacher.prompts_per_step x teacher.num_generations")
        return self

    @field_validator("warm_start", mode="before")
    @classmethod
    def _rule_in_part(cls, given):
        return merged_with(WARM_START, given)

    @model_validator(mode="after")
    def _rule_sets_warm_start(self):
        check_settings({"warm_start": self.warm_start}, WARM_START_SETTINGS, "teacher")
        missing = sorted(WARM_START_SETTINGS - set(self.warm_start.settings))
        if missing:
            raise ValueError(f"teacher.warm_start.settings must give {', '.join(missing)} too")
        return self

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations


class TeacherGateFailed(RuntimeError):
    """The RL teacher did not beat its initial model on held-out items by the margin: the update stops."""

    def __init__(self, skill: str, initial_accuracy: float, accuracy: float, margin: float, items: int,
                 steps: int, run_id: str = ""):
        self.skill, self.initial_accuracy, self.accuracy, self.margin = skill, initial_accuracy, accuracy, margin
        self.items, self.steps, self.run_id = items, steps, run_id
        super().__init__(
            f"teacher gate failed for skill {skill!r}: the teacher's held-out accuracy {accuracy:.3f} is below the "
            f"initial model's {initial_accuracy:.3f} + margin {margin:.3f} = {initial_accuracy + margin:.3f} "
            f"({items} held-out items, best checkpoint of {steps} RL steps, scored with the skill's verifier). "
            "RL did not teach the skill (or the reward does not measure it): check the reward, the learning rate "
            "and the steps. Nothing was registered and nothing downstream runs."
            + (f" MLflow run {run_id}." if run_id else "")
        )

    def __reduce__(self):  # Prefect may pickle a failed task's exception: rebuild it from its numbers
        return type(self), (self.skill, self.initial_accuracy, self.accuracy, self.margin, self.items, self.steps,
                             self.run_id)


def train_teacher(batch: AcceptedBatch, champion: ModelRef, cfg: TeacherConfig, catalogue: Catalogue, home: Home,
                  parent_run_id: str | None = None, reward_fn: RewardFunction | None = None, *,
                  compute: ComputeConfig = DEFAULT_COMPUTE) -> Teacher:
    """Train (or reuse) the teacher for `batch.skill`, gate it and register it as `cfg.registered_model`.

    `reward_fn` replaces the correctness reward (default: exact match with the skill's verifier); the
    teacher gate still uses the verifier, which is how a reward that does not measure the skill is caught.
    `compute` says how the machine is used (precision, vLLM rollouts; `continual_opd.compute`).
    """
    skill = catalogue[batch.skill]
    rows = [it for it in load_batch(batch.path) if it.skill == batch.skill]
    if not rows:
        raise ValueError(f"batch {batch.path} has no rows of skill {batch.skill!r}: nothing to train a teacher on")
    initial_folder, initial_model = resolve_initial_model(cfg, champion)
    rewards = [(reward_fn or exact_match(skill), 1.0)]
    if cfg.format_reward_weight > 0:
        rewards.append((format_reward(skill), cfg.format_reward_weight))
    key = teacher_key(batch.skill, batch.digest, initial_model, cfg, rewards,
                      training_precision(compute.precision, pick_device()))
    identity = {"skill": batch.skill, "data_digest": batch.digest, "initial_model": initial_model,
                "rewards": reward_summary(rewards), "registration_key": key}
    params = {**{k: v for k, v in identity.items() if k != "registration_key"}, "batch_rows": len(rows),
              "initial_folder": str(initial_folder), "reward_name": rewards[0][0].name,
              "reward_version": rewards[0][0].version,
              **{f"reward.{i}": f"{r.key}: {r.description}" for i, (r, _) in enumerate(rewards)},
              **compute_params(compute)}
    lineage = {"role": "teacher", "method": "grpo", "data_digest": batch.digest, "initial_model": initial_model,
               "reward": identity["rewards"], "reward_name": rewards[0][0].name,
               "reward_version": rewards[0][0].version}
    outcome: dict = {}

    def train(stage: StageRun) -> Trained:
        return _train_and_gate(rows, skill, catalogue, initial_folder, identity, rewards, cfg, stage, compute,
                               outcome)

    version, reused = run_stage(spec(cfg), batch.skill, key, cfg, home, parent_run_id, lineage, params, train)
    if reused:
        return _reuse(version, identity, parent_run_id)
    return Teacher(model=ModelRef(name=cfg.registered_model, version=str(version.version),
                                  folder=str(registry.local_folder(version))),
                   skill=skill.id, initial_accuracy=outcome["initial_accuracy"], accuracy=outcome["accuracy"],
                   steps=outcome["best_step"], run_id=version.run_id or "")


def spec(cfg: TeacherConfig) -> StageSpec:
    return StageSpec(stage=STAGE, kind="teacher", folder_prefix="teacher", registered_model=cfg.registered_model,
                     code=TRAINING_CODE)


def resolve_initial_model(cfg: TeacherConfig, champion: ModelRef) -> tuple[Path, str]:
    """(folder, identity) of the teacher's initial model; the identity goes into tags and the reuse key."""
    if cfg.init == "champion":
        return Path(champion.folder), f"{champion.name}/{champion.version}"
    if cfg.init.startswith(REGISTRY_PREFIX):
        name, sep, version = cfg.init[len(REGISTRY_PREFIX):].rpartition("/")
        if not (sep and name and version):
            raise ValueError(f"teacher init {cfg.init!r} is not 'registry:<name>/<version>' "
                             "(e.g. registry:continual-opd-student/3)")
        found = registry.get_version(name, version)
        return registry.local_folder(found), f"{name}/{found.version}"
    folder = check_model_folder(cfg.init, cfg.trust_remote_code).resolve()
    return folder, f"folder:{folder}#{weights_digest(folder)}"


def reward_summary(rewards: list[tuple[RewardFunction, float]]) -> str:
    return " + ".join(f"{weight:g}*{reward.key}" for reward, weight in rewards)


def teacher_key(skill: str, data_digest: str, initial_model: str, cfg: TeacherConfig,
                rewards: list[tuple[RewardFunction, float]], precision: str = "fp32") -> str:
    """The registration key: the same key means the same teacher, so it is reused, never trained twice. It covers
    the inputs, the requested settings, the resolved training precision and the code that trains."""
    return registration_key(spec(cfg), skill, [skill, data_digest, initial_model, cfg.config_hash(),
                                               reward_summary(rewards), precision])


def teacher_folder(home: Home, key: str, cfg: TeacherConfig | None = None) -> Path:
    """Where the teacher with this registration key lives in the home."""
    return trained_folder(home, spec(cfg or TeacherConfig()), key)


def _reuse(version, identity: dict, parent_run_id: str | None) -> Teacher:
    import mlflow

    tags = version.tags
    teacher = Teacher(
        model=ModelRef(name=version.name, version=str(version.version), folder=str(registry.local_folder(version))),
        skill=identity["skill"], initial_accuracy=float(tags["initial_accuracy"]), accuracy=float(tags["accuracy"]),
        steps=int(tags["best_step"]), reused=True, run_id=version.run_id or "",
    )
    with stage_run(STAGE, parent_run_id, tags={"reused": "true", "teacher_version": str(version.version),
                                               "skill": identity["skill"]}):
        mlflow.log_params({**identity, "reused_from_run": version.run_id or ""})
        mlflow.log_metrics({"teacher/initial_accuracy": teacher.initial_accuracy, "teacher/accuracy": teacher.accuracy})
    return teacher



def _grpo_args(cfg: TeacherConfig, output_dir: Path, reward_weights: list[float], compute: ComputeConfig):
    from trl import GRPOConfig

    return GRPOConfig(
        **trainer_args(output_dir=output_dir, steps=cfg.steps, learning_rate=cfg.learning_rate,
                       lr_schedule=LR_SCHEDULE, warmup_steps=0, seed=cfg.seed,  # the callback keeps the best
                       batch_size=cfg.completions_per_step, micro_batch_size=cfg.micro_batch_size,
                       precision=compute.precision),
        **rollout_args(compute),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=TEMPERATURE,
        reward_weights=reward_weights,
        beta=0.0,  # no reference model: the teacher is gated on held-out accuracy instead
    )


def _run_grpo(model, tokenizer, rows, rewards, cfg: TeacherConfig, output_dir: Path, callback,
              compute: ComputeConfig) -> int:
    """GRPO on the batch rows, in place on `model`; returns the steps taken."""
    from datasets import Dataset
    from trl import GRPOTrainer

    data = Dataset.from_dict({"prompt": [as_trl_prompt(tokenizer, it.prompt) for it in rows],
                              "answer": [it.answer for it in rows]})
    trainer = GRPOTrainer(
        model=model, processing_class=tokenizer, train_dataset=data,
        args=_grpo_args(cfg, output_dir, [weight for _, weight in rewards], compute),
        reward_funcs=[r.for_trl() for r, _ in rewards],
    )
    attach(trainer, [callback], progress="teacher-rl", progress_logs={"reward": "reward"}).train()
    return trainer.state.global_step


def _train_and_gate(rows, skill, catalogue: Catalogue, initial_folder: Path, identity: dict, rewards,
                    cfg: TeacherConfig, stage: StageRun, compute: ComputeConfig, outcome: dict) -> Trained:
    """Warm start (by rule), GRPO, the best checkpoint, the teacher gate: the teacher to register, or
    `TeacherGateFailed`. `outcome` receives the accuracies and the best step for the stage's record."""
    import mlflow

    work = stage.work
    max_new_tokens = answer_tokens(cfg.max_completion_length)
    started = time.time()
    metrics = MetricBuffer(stage.run_id)
    eval_set, gate_set, dropped = heldout_sets(skill, rows, cfg)
    model, tokenizer = load_model(initial_folder, cfg.trust_remote_code)  # trained: fp32 master weights
    initial_gate, _ = skill_accuracy(model, tokenizer, gate_set, skill.verify, max_new_tokens=max_new_tokens)
    metrics.add({"heldout/dropped_overlapping": dropped}, 0)
    start_folder, warm = initial_folder, None
    measured = rules.measure(model, tokenizer, skill.verify, eval_set, rows, max_new_tokens=max_new_tokens)
    fired, settings = rules.fire({"warm_start": cfg.warm_start}, measured["accuracy"])
    stage.trained_with(cfg, fired)
    metrics.add({"warm_start/initial_accuracy": measured["accuracy"], "warm_start/measured_items": measured["items"],
                 "warm_start": float(bool(fired))}, 0)
    if fired:  # rule: RL alone gets no reward on a skill the model cannot do
        warm = warm_start(model, tokenizer, rows, skill, catalogue, eval_set, seed=cfg.seed,
                          max_new_tokens=max_new_tokens, **settings)
        start_folder = work / "warm"
        save_model_atomic(model, tokenizer, start_folder)
        metrics.add({"warm_start/steps": warm["steps"], "warm_start/accuracy": warm["accuracy"],
                     "warm_start/seconds": warm["seconds"]}, 0)
    callback = heldout_callback(tokenizer, {skill.id: eval_set}, catalogue, metrics, every=cfg.eval_every,
                                max_new_tokens=max_new_tokens, log_prefix="rl", select=skill.id,
                                best_dir=work / "best", stop_at=cfg.early_stop_accuracy,
                                completions_per_step=cfg.completions_per_step)
    callback.evaluate(model, 0)  # the initial (or warm-started) model: what the best checkpoint must beat
    train_started = time.time()
    steps_run = (_run_grpo(model, tokenizer, rows, rewards, cfg, work / "trainer", callback, compute)
                 if cfg.steps else 0)
    train_seconds = time.time() - train_started
    # loaded as trained (fp32), not frozen: this model is saved as the teacher, and a bf16 copy would round
    # away what training changed
    best = work / "best" if callback.best_step > 0 else start_folder
    model, tokenizer = load_model(best, cfg.trust_remote_code)
    teacher_gate, _ = skill_accuracy(model, tokenizer, gate_set, skill.verify, max_new_tokens=max_new_tokens)
    passed = teacher_gate >= initial_gate + cfg.gate_margin
    metrics.add({"teacher/steps": steps_run, "teacher/best_step": callback.best_step,
                 "teacher/tokens_sampled": callback.tokens_sampled, "teacher/completions": callback.completions,
                 "teacher/train_seconds": train_seconds, "teacher/initial_accuracy": initial_gate,
                 "teacher/accuracy": teacher_gate, "teacher_gate/margin": cfg.gate_margin,
                 "teacher_gate/passed": float(passed), "teacher/best_eval_accuracy": callback.best_accuracy},
                steps_run)
    mlflow.set_tag("teacher_gate", "passed" if passed else "failed")
    metrics.add({"teacher/wall_seconds": time.time() - started}, steps_run)
    metrics.flush()
    if not passed:
        shutil.rmtree(work, ignore_errors=True)
        raise TeacherGateFailed(skill.id, initial_gate, teacher_gate, cfg.gate_margin, len(gate_set),
                                steps_run, stage.run_id)
    outcome.update(initial_accuracy=initial_gate, accuracy=teacher_gate, best_step=callback.best_step)
    warm_tag = (f"{warm['steps']} supervised steps at lr {settings['learning_rate']:g} (initial accuracy "
                f"{measured['accuracy']:.3f} on {measured['items']:.0f} selection and batch items): selection-set "
                f"accuracy {warm['accuracy']:.3f}") if warm else "none"
    return Trained(
        model, tokenizer, report_file="teacher_report.json",
        report={**identity, "initial_accuracy": initial_gate, "accuracy": teacher_gate, "warm_start": warm,
                "best_step": callback.best_step, "steps": steps_run,
                "curve": [(step, acc[skill.id]) for step, acc in callback.history]},
        tags={"initial_accuracy": f"{initial_gate:.4f}", "accuracy": f"{teacher_gate:.4f}",
              "best_step": str(callback.best_step), "steps": str(steps_run), "teacher_gate": "passed",
              "warm_start": warm_tag},
        description=f"{'warm-started ' if warm else ''}GRPO teacher for {skill.id} from "
                    f"{identity['initial_model']}: held-out accuracy {initial_gate:.3f} -> {teacher_gate:.3f}.",
        example_prompts=[gate_set[0].prompt], trust_remote_code=cfg.trust_remote_code)


def heldout_sets(skill, rows, cfg: TeacherConfig):
    """The selection set and the teacher gate's set, minus any prompt the batch trains on.

    The selection set (`eval_items` of the held-out split's selection part) decides every choice of the stage: the
    warm-start rule and its stop, early stopping, the best checkpoint. The teacher gate judges on `gate_items` of
    the gate part, which no choice reads (`continual_opd.suites`): choosing and judging on the same items would
    flatter the teacher. A small skill gets what its parts hold (the demo's mul: 45 and 147).
    """
    trained = {it.prompt for it in rows}
    drawn = {part: part_items(skill, part, n, seed=cfg.seed)
             for part, n in (("selection", cfg.eval_items), ("gate", cfg.gate_items))}
    eval_set, gate_set = ([it for it in drawn[part] if it.prompt not in trained] for part in ("selection", "gate"))
    dropped = sum(map(len, drawn.values())) - len(eval_set) - len(gate_set)
    if not eval_set or not gate_set:
        raise ValueError(f"skill {skill.id!r} has {len(eval_set)} selection and {len(gate_set)} gate held-out items "
                         f"that the batch does not train on ({dropped} drawn are batch prompts): too few to both "
                         "choose the teacher's checkpoint and gate it. Take the batch's rows from the train split, "
                         "or declare more held-out items")
    return eval_set, gate_set, dropped
