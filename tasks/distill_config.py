"""Settings of the distillation stage, its routes and its guard error: what the stage and its trainers share.

Baselines share the step, batch and rollout budget (`steps` x `prompts_per_step` sampled completions)
so the gate and the benchmark can compare them:
- `opd`: routed on-policy distillation with replay (the default);
- `opd_no_replay`: the same on target prompts only (the stock single-teacher setting);
- `sft_teacher_samples`: off-policy distillation, cross-entropy on the teacher's sampled completions
  (TRL `SFTTrainer`);
- `grpo`: RL directly on the student with the skill's verifier as reward (TRL `GRPOTrainer`, the
  reward of `tasks.rewards`, as the teacher stage uses), `grpo_generations` completions per prompt.
Only `opd` mixes in replay prompts: the baselines are the methods as usually run.
"""

from typing import Literal

from pydantic import Field, model_validator

from continual_opd import registry
from continual_opd.config import StrictConfig
from continual_opd.training import micro_batches

Method = Literal["opd", "opd_no_replay", "sft_teacher_samples", "grpo"]
TARGET_ROUTE, ANCHOR_ROUTE = "target", "anchor"


class DistillConfig(StrictConfig):
    """Settings of the distillation stage; the defaults are the CPU recipe measured on the demo world.

    Measured on the demo base (add 0.32 -> teacher 0.65, 1,000 held-out items): 256 prompts a step at
    lr 1e-3 with linear decay reached 99% of the teacher's gain in 100 steps with every core skill within
    0.1 point; 64 prompts a step at 3e-4 reached 75% (the base learns addition slowly).
    """

    method: Method = Field("opd", description="opd (with core replay), opd_no_replay, sft_teacher_samples or grpo.")
    steps: int = Field(100, ge=1, description="Optimizer steps.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate (TRL's default 1e-6 learns nothing on "
                                                         "small models).")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("linear", description="Learning-rate schedule after "
                                                                                        "warm-up (linear: decay to 0).")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps.")
    prompts_per_step: int = Field(256, ge=1, description="Sampled completions per step, for every method (the "
                                                         "rollout budget).")
    micro_batch_size: int | None = Field(None, ge=1, description="Completions per forward/backward pass: a step's "
                                                                 "rollouts are sampled at once, then their gradient "
                                                                 "accumulated over passes of this size (bounds "
                                                                 "memory, same update). Must divide "
                                                                 "prompts_per_step; empty = one pass.")
    replay_fraction: float = Field(0.25, ge=0, lt=1, description="Share of each opd batch that is core-skill replay "
                                                                 "prompts scored by the frozen champion.")
    replay_taught: bool = Field(True, description="Replay also the target skills taught by earlier promoted updates "
                                                  "(the home's accuracy matrix): without it a sub update erased "
                                                  "add (measured: 65% -> 35%).")
    anchor_kl_coef: float = Field(0.0, ge=0, description="Extra reverse KL to the frozen champion on target prompts "
                                                         "(opd methods; 0 = off).")
    beta: float = Field(1.0, ge=0, le=1, description="TRL's divergence: 1.0 = reverse KL (on-policy distillation), "
                                                     "0.0 = forward KL, between = generalised JSD.")
    max_completion_length: int = Field(8, ge=1, description="Most tokens sampled per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts and teacher samples.")
    grpo_generations: int = Field(8, ge=2, description="grpo only: completions per prompt (group size); must divide "
                                                       "prompts_per_step.")
    eval_every: int = Field(25, ge=1, description="Held-out accuracy (target and core) every this many steps.")
    eval_items: int = Field(200, ge=1, description="Held-out items per skill for the accuracy curve.")
    max_initial_kl: float = Field(3.0, gt=0, description="Stop if the mean per-token reverse KL to the teacher on "
                                                         "target prompts at step 0 is above this (nats; measured: "
                                                         "trained teachers 0.4-2.1, an untrained model 3.8).")
    seed: int = Field(0, description="Seed of prompt mixing, sampling and training.")
    registered_model: str = Field(registry.STUDENT_MODEL, description="Registered model that receives candidates.")
    checkpoint_every: int = Field(25, ge=1, description="Save a resumable trainer checkpoint every this many steps.")

    @model_validator(mode="after")
    def _micro_batches_fit(self):
        micro_batches(self.prompts_per_step, self.micro_batch_size, "distill.micro_batch_size",
                      "distill.prompts_per_step")
        return self

    @model_validator(mode="after")
    def _grpo_groups_fit(self):
        if self.method == "grpo" and self.prompts_per_step % self.grpo_generations:
            raise ValueError(f"grpo needs prompts_per_step ({self.prompts_per_step}) to be a multiple of "
                             f"grpo_generations ({self.grpo_generations})")
        return self

    @property
    def uses_teacher(self) -> bool:
        return self.method != "grpo"

    @property
    def replay_per_step(self) -> int:
        return round(self.prompts_per_step * self.replay_fraction) if self.method == "opd" else 0


class DistillationGuardError(RuntimeError):
    """The stage refused to distil: the teacher cannot be distilled from (vocabulary, initial divergence)."""
