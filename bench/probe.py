"""A trainer callback that measures a distillation run the same way for every method.

Every `every` optimizer steps (and at step 0 and the last step) it pauses the clock and records held-out
accuracy on the target and every core skill, `drift/kl_core` against the frozen base, the student tokens
sampled so far, the gradient steps and the training wall time (probe time excluded), so curves of
different methods share one x-axis. Tokens come from the trainers' own logs: TRL's distillation trainer
(`tokens_sampled`, logged by `RoutedDistillationTrainer`) and GRPO (`completions/mean_length` x completions);
`sft_teacher_samples` samples nothing from the student (its teacher samples are counted separately).
"""

import time

from transformers import TrainerCallback

from continual_opd.decoding import skill_accuracy
from demo_world.skills import SKILLS
from tasks.evaluate import kl_drift


class Probe(TrainerCallback):
    def __init__(self, *, base_model, tokenizer, eval_sets: dict, kl_prompts: list[str], every: int,
                 completions_per_step: int, max_new_tokens: int = 8, seed: int = 0):
        self.base_model, self.tokenizer = base_model, tokenizer
        self.eval_sets, self.kl_prompts = eval_sets, kl_prompts
        self.every, self.completions_per_step = every, completions_per_step
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.points: list[dict] = []
        self.student_tokens = 0.0
        self.train_seconds = 0.0
        self._clock = None
        self._pending = None  # (model, step) to measure once this step's token count is logged

    def measure(self, model, step: int) -> dict:
        import torch

        was_training = model.training
        model.eval()
        with torch.no_grad():
            acc = {name: skill_accuracy(model, self.tokenizer, items, SKILLS[name].verify,
                                        max_new_tokens=self.max_new_tokens)[0]
                   for name, items in self.eval_sets.items()}
            kl = kl_drift(self.base_model, self.tokenizer, model, self.tokenizer, self.kl_prompts,
                          self.max_new_tokens, self.seed)
        if was_training:
            model.train()
        point = {"step": step, "student_tokens": self.student_tokens, "train_seconds": self.train_seconds,
                 "kl_core": kl, **{f"acc/{k}": v for k, v in acc.items()}}
        self.points.append(point)
        return point

    def _pause(self):
        if self._clock is not None:
            self.train_seconds += time.perf_counter() - self._clock
            self._clock = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.points:
            self.measure(model, 0)
        self._clock = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "tokens_sampled" in logs:
            self.student_tokens += logs["tokens_sampled"]
        elif "completions/mean_length" in logs:
            self.student_tokens += logs["completions/mean_length"] * self.completions_per_step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._pause()
            # on_log for this step runs after on_step_end: count this step's tokens first, then measure
            self._pending = (model, state.global_step)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._flush_pending()
        if self._clock is None:
            self._clock = time.perf_counter()

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._pause()
        self._flush_pending()

    def _flush_pending(self):
        pending = self._pending
        if pending is not None:
            self._pending = None
            self.measure(*pending)
