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

Levers that keep earlier skills (each a setting; docs/benchmark.md measures each alone and together):
- replay: `replay_fraction` of every opd step replays the core skills and the targets taught by earlier
  promoted updates, with `taught_replay_weight` shares for each taught skill against one per core skill;
- `replay_teachers`: a taught skill's replay rows are scored by the teacher of the update that taught it
  ("own") or by the frozen champion;
- divergences: `beta` on target rows, `replay_beta` on replay rows (1 reverse KL, 0 forward KL), and
  `anchor_kl_coef`, an extra reverse KL to the frozen champion on every target row;
- a cold target (the champion scores below `cold_target_below` on it) trains `cold_target_steps` steps with
  `cold_target_replay_fraction` of each step replay, `cold_target_weight_decay` and
  `cold_target_teacher_sampled_fraction` of its target rows sampled by the teacher;
- `weight_decay`: AdamW's decoupled weight decay;
- `teacher_sampled_fraction`: that share of the target rows gets its completion from the teacher (off-policy);
- the learning-rate schedule (`warmup_steps`, `lr_schedule`);
- `lora_rank`: a LoRA adapter (peft) instead of full fine-tuning, merged before saving;
- `interpolation_alphas`: the registered candidate is the largest interpolation between champion and
  trained student whose results on a selection split (held-out items outside the gate's suites) pass the
  gate's policy.
"""

from typing import Literal

from pydantic import Field, model_validator

from continual_opd import registry
from continual_opd.config import StrictConfig
from continual_opd.training import micro_batches

Method = Literal["opd", "opd_no_replay", "sft_teacher_samples", "grpo"]
ROUTED_METHODS = ("opd", "opd_no_replay")  # trained by the routed trainer, with the guard and the cold-target rule
TARGET_ROUTE, ANCHOR_ROUTE = "target", "anchor"
TAUGHT_ROUTE = "taught:"  # + skill id: replay of a taught skill scored by the teacher that taught it


class DistillConfig(StrictConfig):
    """Settings of the distillation stage; the defaults are the CPU recipe measured on the demo world.

    Measured on the demo base (add 0.32 -> teacher 0.65, 1,000 held-out items): 256 prompts a step at
    lr 1e-3 with linear decay reached 99% of the teacher's gain in 100 steps with every core skill within
    0.1 point; 64 prompts a step at 3e-4 reached 75% (the base learns addition slowly).

    The continual defaults are the combination that kept earlier-taught skills over the add -> sub -> mul
    sequence (docs/benchmark.md, ablation): half of every step is replay, each taught skill with 8 shares
    against one per core skill and scored by its own teacher; forward KL on target rows, reverse KL on
    replay rows; 1,200 steps with weight decay 1.0 for a target the champion cannot do; the reference-NLL
    teacher guard.
    """

    method: Method = Field("opd", description="opd (with core replay), opd_no_replay, sft_teacher_samples or grpo.")
    steps: int = Field(100, ge=1, description="Optimizer steps.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate (TRL's default 1e-6 learns nothing on "
                                                         "small models).")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("linear", description="Learning-rate schedule after "
                                                                                        "warm-up (linear: decay to 0).")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay (biases and norms exempt, as in "
                                                       "transformers' Trainer); 0 is TRL's default.")
    prompts_per_step: int = Field(256, ge=1, description="Sampled completions per step, for every method (the "
                                                         "rollout budget).")
    micro_batch_size: int | None = Field(None, ge=1, description="Completions per forward/backward pass: a step's "
                                                                 "rollouts are sampled at once, then their gradient "
                                                                 "accumulated over passes of this size (bounds "
                                                                 "memory, same update). Must divide "
                                                                 "prompts_per_step; empty = one pass.")
    replay_fraction: float = Field(0.5, ge=0, lt=1, description="Share of each opd batch that replays the core "
                                                                "skills and earlier-taught skills.")
    replay_taught: bool = Field(True, description="Replay also the target skills taught by earlier promoted updates "
                                                  "(the registry's accuracy matrix): without it a sub update erased "
                                                  "add (measured: 65% -> 35%).")
    taught_replay_weight: float = Field(8.0, ge=1, description="Replay shares of each earlier-taught skill against "
                                                               "one share per core skill (1 = equal shares).")
    replay_teachers: Literal["champion", "own"] = Field("own", description="Who scores the replay rows of an "
                                                        "earlier-taught skill: the frozen champion, or 'own': the "
                                                        "teacher of the update that taught it (core replay: always "
                                                        "the champion).")
    anchor_kl_coef: float = Field(0.0, ge=0, description="Extra reverse KL to the frozen champion on target prompts "
                                                         "(opd methods; 0 = off).")
    beta: float = Field(0.0, ge=0, le=1, description="Divergence on target rows (TRL's beta): 1.0 = reverse KL "
                                                     "(on-policy distillation), 0.0 = forward KL at the student's "
                                                     "own samples, between = generalised JSD.")
    replay_beta: float = Field(1.0, ge=0, le=1, description="Divergence on replay rows: 1.0 = reverse KL, 0.0 = "
                                                            "forward KL.")
    cold_target_below: float = Field(0.05, ge=0, le=1, description="Rule: a target the champion answers below this "
                                     "share of its held-out items (one it cannot do at all) trains cold_target_steps "
                                     "instead of steps (0 = never).")
    cold_target_items: int = Field(1000, ge=1, description="Held-out target items the champion is scored on for the "
                                   "cold-target rule (200 judged the demo's sub, at 7%, cold on some seeds).")
    cold_target_steps: int = Field(1200, ge=1, description="Optimizer steps for a cold target (the demo's mul: 300 "
                                   "steps reached 0.23-0.38 of its teacher's gain, 1,200 steps 0.64-0.83, both "
                                   "without weight decay).")
    cold_target_replay_fraction: float = Field(0.625, ge=0, lt=1, description="replay_fraction for a cold target "
                                               "(opd; never lowers replay_fraction, 0 stays 0).")
    teacher_sampled_fraction: float = Field(0.0, ge=0, le=1, description="Share of each step's target rows whose "
                                            "completion the teacher samples instead of the student (off-policy, "
                                            "GKD's 1 - lmbda; opd methods; 0 = fully on-policy).")
    cold_target_teacher_sampled_fraction: float = Field(0.0, ge=0, le=1, description="teacher_sampled_fraction "
                                                        "for a cold target (never lowers it).")
    cold_target_weight_decay: float = Field(1.0, ge=0, description="weight_decay for a cold target (never lowers "
                                            "it): the demo's mul, learned from 528 prompts, generalised to 0.82-0.88 "
                                            "of its teacher's gain with 1.0, 0.64-0.83 with none.")
    lora_rank: int = Field(0, ge=0, description="LoRA adapter rank on every linear layer (peft), merged into the "
                                                "weights before saving; 0 = full fine-tuning.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (the update is scaled by "
                                                      "lora_alpha / lora_rank).")
    interpolation_alphas: list[float] = Field(default_factory=lambda: [1.0], description="Candidates theta_champion "
                                              "+ alpha (theta_student - theta_champion), tried from the largest; the "
                                              "first whose selection-split results pass the gate's policy is "
                                              "registered ([1.0] = the trained student, no selection).")
    selection_items: int = Field(300, ge=20, description="Held-out items per suite for choosing alpha, drawn outside "
                                                         "the gate's suites.")
    max_completion_length: int = Field(8, ge=1, description="Most tokens sampled per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts and teacher samples.")
    grpo_generations: int = Field(8, ge=2, description="grpo only: completions per prompt (group size); must divide "
                                                       "prompts_per_step.")
    eval_every: int = Field(25, ge=1, description="Held-out accuracy (target and core) every this many steps.")
    eval_items: int = Field(200, ge=1, description="Held-out items per skill for the accuracy curve.")
    guard: Literal["reference_nll", "kl"] = Field("reference_nll", description="Step-0 teacher guard: reference_nll "
                                                  "stops when the teacher's mean per-token NLL of the batch's "
                                                  "reference answers is above max_reference_nll; kl when the "
                                                  "student's reverse KL to the teacher on target prompts is above "
                                                  "max_initial_kl.")
    max_reference_nll: float = Field(3.0, gt=0, description="guard=reference_nll: the bound, nats per answer token "
                                                            "(uniform over the demo's 69 tokens is 4.2).")
    max_initial_kl: float = Field(3.0, gt=0, description="guard=kl: the bound, nats per token (measured: trained "
                                                         "teachers 0.4-2.1, an untrained model 3.8).")
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

    @model_validator(mode="after")
    def _alphas_valid(self):
        if not self.interpolation_alphas or any(not 0 < a <= 1 for a in self.interpolation_alphas):
            raise ValueError(f"interpolation_alphas {self.interpolation_alphas} must be one or more numbers in (0, 1]")
        return self

    @property
    def uses_teacher(self) -> bool:
        return self.method != "grpo"

    @property
    def replay_per_step(self) -> int:
        return round(self.prompts_per_step * self.replay_fraction) if self.method == "opd" else 0

    @property
    def teacher_sampled_per_step(self) -> int:
        """Target rows a step whose completion the teacher samples (routed methods only)."""
        n_target = self.prompts_per_step - self.replay_per_step
        return round(n_target * self.teacher_sampled_fraction) if self.method in ROUTED_METHODS else 0


class DistillationGuardError(RuntimeError):
    """The stage refused to distil: the teacher cannot be distilled from (vocabulary, initial divergence)."""
