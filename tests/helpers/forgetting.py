"""Distillation settings measured to lose core skills on the demo world, for tests that show the gate rejecting them.

Measured with the stage teacher (add 0.35 -> 0.65). Combine with a budget:
`DistillConfig(**FORGETS_CORE["sft_teacher_samples"], steps=40)`.
- opd_no_replay at lr 3e-3: 100 x 256 kept the full target gain but left copy/reverse/upper at 0.08/0.16/0.00;
  40 x 64 left them at 0.06/0.12/0.02 (and add fell too).
- sft_teacher_samples at the default lr: 100 x 256 reached 96% of the gain and lost 14-44 points on every core
  skill; 40 x 256 reached 77% of the gain and lost 14 points on reverse, 3 on copy.
"""

FORGETS_CORE: dict[str, dict] = {
    "opd_no_replay": {"method": "opd_no_replay", "learning_rate": 3e-3, "beta": 1.0},  # reverse KL, as measured
    "sft_teacher_samples": {"method": "sft_teacher_samples"},
}
