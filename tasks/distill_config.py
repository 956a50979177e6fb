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

A setting here is a budget or I/O choice a user must make, or a lever measured to matter: replay and its shares,
who scores taught skills' replay, the divergence on each kind of row, weight decay, LoRA. Levers measured not to
help on the demo world (an anchor KL term, learning-rate warm-up and cosine decay, interpolation towards the
champion, teacher-sampled rows, the step-0 KL guard) were removed; their measurements are in docs/benchmark.md.
One rule (`cold_target`, `continual_opd.rules`) changes settings for a target the champion cannot do.
"""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from continual_opd import registry
from continual_opd.config import StrictConfig
from continual_opd.rules import Rule, check_settings, merged_with
from continual_opd.training import micro_batches

Method = Literal["opd", "opd_no_replay", "sft_teacher_samples", "grpo"]
ROUTED_METHODS = ("opd", "opd_no_replay")  # trained by the routed trainer, with the guard and the cold-target rule
TARGET_ROUTE, ANCHOR_ROUTE = "target", "anchor"
TAUGHT_ROUTE = "taught:"  # + skill id: replay of a taught skill scored by the teacher that taught it
LR_SCHEDULE = "linear"  # decay to 0 after no warm-up (warm-up and cosine decay were measured not to help)
TEMPERATURE = 1.0  # rollouts sample the student's own distribution
COLD_TARGET = Rule(below=0.05, settings={"steps": 1200, "replay_fraction": 0.625, "weight_decay": 1.0})


class DistillConfig(StrictConfig):
    """Settings of the distillation stage; the defaults are the CPU recipe measured on the demo world
    (docs/benchmark.md)."""

    method: Method = Field("opd", description="opd (with core replay), opd_no_replay, sft_teacher_samples or grpo.")
    steps: int = Field(100, ge=1, description="Optimizer steps.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate, decayed linearly to 0 (TRL's "
                                                         "default 1e-6 learns nothing on small models).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay (biases and norms exempt, as in "
                                                       "transformers' Trainer); 0 is TRL's default.")
    prompts_per_step: int = Field(256, ge=1, description="Sampled completions per step, for every method (the "
                                                         "rollout budget).")
    micro_batch_size: int | None = Field(None, ge=1, description="Completions per forward/backward pass; the "
                                         "gradient accumulates over passes (bounds memory, same update). Must divide "
                                         "prompts_per_step; empty = one pass.")
    replay_fraction: float = Field(0.5, ge=0, lt=1, description="Share of each opd batch that replays the core "
                                                                "skills and earlier-taught skills.")
    taught_replay_weight: float = Field(8.0, ge=0, description="Replay shares of each skill taught by an earlier "
                                        "promoted update against one share per core skill (0 = replay core skills "
                                        "only).")
    replay_teachers: Literal["champion", "own"] = Field("own", description="Who scores the replay rows of an "
                                                        "earlier-taught skill: the frozen champion, or 'own': the "
                                                        "teacher of the update that taught it (core replay: always "
                                                        "the champion).")
    beta: float = Field(0.0, ge=0, le=1, description="Divergence on target rows (TRL's beta): 1.0 = reverse KL, 0.0 "
                                                     "= forward KL at the student's own samples, between = "
                                                     "generalised JSD.")
    replay_beta: float = Field(1.0, ge=0, le=1, description="Divergence on replay rows: 1.0 = reverse KL, 0.0 = "
                                                            "forward KL.")
    cold_target: Rule = Field(default_factory=lambda: COLD_TARGET, description=(
        "Rule for a target the champion cannot do (routed methods): its condition on the champion's accuracy over "
        "the target's selection items and the batch's prompts, and the settings it sets (given in part, the rest is "
        "the default's)."))
    lora_rank: int = Field(0, ge=0, description="LoRA adapter rank on every linear layer (peft, alpha = 2 x rank), "
                                                "merged into the weights before saving; 0 = full fine-tuning.")
    eval_items: int = Field(300, ge=1, description="Selection-part items per skill for the accuracy curve and, with "
                                                   "the batch's prompts, the cold-target rule's measurement (never "
                                                   "the gate's items).")
    max_completion_length: int = Field(8, ge=1, description="Most tokens sampled per completion.")
    grpo_generations: int = Field(8, ge=2, description="grpo only: completions per prompt (group size); must divide "
                                                       "prompts_per_step.")
    eval_every: int = Field(25, ge=1, description="Held-out accuracy (target and core) every this many steps.")
    max_reference_nll: float = Field(3.0, gt=0, description="Step-0 guard (routed methods): stop when the teacher's "
                                     "mean NLL of the batch's reference answers is above this, nats per answer token.")
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

    @field_validator("cold_target", mode="before")
    @classmethod
    def _rule_in_part(cls, given):
        return merged_with(COLD_TARGET, given)

    @model_validator(mode="after")
    def _rule_sets_settings(self):
        check_settings({"cold_target": self.cold_target}, {name for name, f in type(self).model_fields.items()
                                                          if f.annotation in (int, float)}, "distill")
        return self

    @property
    def uses_teacher(self) -> bool:
        return self.method != "grpo"

    @property
    def replay_per_step(self) -> int:
        return round(self.prompts_per_step * self.replay_fraction) if self.method == "opd" else 0

    def with_settings(self, settings: dict) -> "DistillConfig":
        """These settings with `settings` applied, validated as a user's would be (a rule's settings)."""
        return type(self).model_validate({**self.model_dump(), **settings}, strict=False)


class DistillationGuardError(RuntimeError):
    """The stage refused to distil: the teacher cannot be distilled from (vocabulary, initial divergence)."""
