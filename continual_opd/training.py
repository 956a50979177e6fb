"""What every trainer of continual-opd needs, built in one place: the teacher stage, distillation and the benchmark.

- `trainer_args`: the arguments every TRL config gets (device and precision, batch and micro-batch, steps
  and schedule, checkpoints, logging). TRL's configs default to bf16 and activation checkpointing, which fail
  or slow down on a CPU, and to `report_to` integrations; the stages log to MLflow themselves. Precision
  follows `continual_opd.compute` (bf16 autocast over fp32 weights, or fp32).
- `micro_batches`: a step's completions split into micro-batches whose gradients accumulate (TRL's
  on-policy trainers sample the whole step at once, then accumulate: the update equals the full batch's).
- `rollout_args`: how on-policy trainers sample (TRL's vLLM in colocate mode when it is installed and a
  GPU is present, sized by `ComputeConfig`; `model.generate` otherwise).
- `heldout_callback`: held-out accuracy every N steps with the project's one decoder, the trainer's logs
  and step times to MLflow, and optionally the best checkpoint kept on disk and early stopping.
- `attach`: the trainer's stdout printer removed (the curves go to MLflow), the callbacks added, and
  optionally the training's progress shown (`continual_opd.progress`).
"""

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from continual_opd.compute import DEFAULT_COMPUTE, ComputeConfig, Precision, bf16_autocast, training_precision
from continual_opd.decoding import skill_accuracy
from continual_opd.modelio import pick_device, save_model_atomic
from continual_opd.progress import trainer_callback
from continual_opd.skills import Catalogue, Item
from continual_opd.tracking import MetricBuffer


def trainer_args(*, output_dir: str | Path, steps: int, learning_rate: float, lr_schedule: str, warmup_steps: int,
                 seed: int, batch_size: int, micro_batch_size: int | None = None, precision: Precision = "auto",
                 save_every: int | None = None, weight_decay: float = 0.0) -> dict:
    """Keyword arguments shared by every TRL config the stages build (GRPO, distillation, SFT).

    `batch_size` counts what one optimizer step trains on (completions); `micro_batch_size` splits it.
    """
    device = pick_device()
    per_device, accumulation = micro_batches(batch_size, micro_batch_size)
    return dict(
        output_dir=str(output_dir), max_steps=steps, learning_rate=learning_rate, lr_scheduler_type=lr_schedule,
        warmup_steps=warmup_steps, seed=seed, weight_decay=weight_decay,
        per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
        bf16=bf16_autocast(precision, device), use_cpu=device == "cpu",
        activation_checkpointing=False,  # TRL turns it on; on small models it only costs time (20-30% on a CPU)
        report_to="none",  # the stages log to MLflow themselves, nested under the update's run
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        **(dict(save_strategy="steps", save_steps=save_every, save_total_limit=1) if save_every
           else dict(save_strategy="no")),
    )


def micro_batches(batch_size: int, micro_batch_size: int | None, setting: str = "micro_batch_size",
                  of: str = "the batch") -> tuple[int, int]:
    """(micro-batch size, accumulation steps) of a step of `batch_size`; raises ValueError naming `setting`."""
    if micro_batch_size is None:
        return batch_size, 1
    if micro_batch_size > batch_size or batch_size % micro_batch_size:
        fits = [d for d in range(1, batch_size + 1) if batch_size % d == 0]
        raise ValueError(f"{setting} ({micro_batch_size}) must divide {of} ({batch_size}) into equal passes: "
                         f"set it to one of {', '.join(map(str, fits))}, or leave it empty (one pass)")
    return micro_batch_size, batch_size // micro_batch_size


def use_vllm(compute: ComputeConfig = DEFAULT_COMPUTE) -> bool:
    """Whether rollouts are sampled with vLLM (`compute.rollouts`; `auto`: when installed and a GPU is present)."""
    import importlib.util

    import torch

    if compute.rollouts == "generate":
        return False
    available = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None
    if compute.rollouts == "vllm" and not available:
        raise ValueError("compute.rollouts=vllm needs a CUDA GPU and the vllm package (pip install vllm); "
                         "set compute.rollouts to auto or generate on this machine")
    return available


def rollout_args(compute: ComputeConfig = DEFAULT_COMPUTE) -> dict:
    """The sampling arguments of TRL's on-policy trainers (GRPO, distillation)."""
    if not use_vllm(compute):
        return dict(use_vllm=False)
    return dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=compute.vllm_gpu_memory_utilization,
                vllm_max_model_length=compute.vllm_max_model_length)


def compute_params(compute: ComputeConfig) -> dict[str, str]:
    """How a stage ran, for its MLflow params: device, resolved training precision, rollout engine."""
    device = pick_device()
    return {"compute.device": device, "compute.precision": training_precision(compute.precision, device),
            "compute.rollouts": "vllm" if use_vllm(compute) else "generate"}


def attach(trainer, callbacks: Sequence = (), progress: str | None = None,
           progress_logs: Mapping[str, str] | None = None):
    """Drop the trainer's per-step stdout printer (the stage logs to MLflow) and add `callbacks`.

    With `progress` (a title), show the steps with the held-out accuracies of `callbacks` that measure them
    and the trainer logs in `progress_logs` (log name -> label).
    """
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    for callback in callbacks:
        trainer.add_callback(callback)
    if progress is not None:
        heldout = [c for c in callbacks if hasattr(c, "latest")]  # heldout_callback's accuracies
        trainer.add_callback(trainer_callback(progress, heldout, progress_logs))
    return trainer


def heldout_callback(tokenizer, eval_sets: Mapping[str, list[Item]], catalogue: Catalogue, metrics: MetricBuffer, *,
                     every: int, max_new_tokens: int, log_prefix: str, select: str | None = None,
                     best_dir: Path | None = None, stop_at: float | None = None, completions_per_step: int = 0):
    """A `TrainerCallback` measuring greedy held-out accuracy on `eval_sets` every `every` steps and at the end.

    To MLflow (through `metrics`): `heldout/<skill>_acc`, `step_seconds`, and the trainer's logs as
    `<log_prefix>/<name>`. Call `.evaluate(model, 0)` before training for the initial model's numbers.
    With `select` (a skill of `eval_sets`): `best_dir` receives the model each time its accuracy there
    beats every earlier evaluation (the initial model included), and `stop_at` ends training once it is
    reached. `completions_per_step` counts sampled tokens from TRL's `completions/mean_length` log.
    """
    from transformers import TrainerCallback

    class HeldoutEval(TrainerCallback):
        def __init__(self):
            self.initial: dict[str, float] = {}
            self.latest: dict[str, float] = {}
            self.history: list[tuple[int, dict[str, float]]] = []
            self.last_step = -1
            self.best_accuracy, self.best_step = float("-inf"), 0
            self.tokens_sampled, self.completions = 0.0, 0
            self._step_started = 0.0

        def evaluate(self, model, step: int) -> dict[str, float]:
            self.latest = {name: skill_accuracy(model, tokenizer, items, catalogue[name].verify,
                                                max_new_tokens=max_new_tokens)[0]
                           for name, items in eval_sets.items()}
            if not self.initial:
                self.initial = dict(self.latest)
            self.last_step = step
            self.history.append((step, dict(self.latest)))
            metrics.add({f"heldout/{k}_acc": v for k, v in self.latest.items()}, step)
            if select is not None and self.latest[select] > self.best_accuracy:
                if step > 0 and best_dir is not None:
                    save_model_atomic(model, tokenizer, best_dir)
                self.best_accuracy, self.best_step = self.latest[select], step
            metrics.flush()
            return self.latest

        def on_step_begin(self, args, state, control, **kwargs):
            self._step_started = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            metrics.add({"step_seconds": time.perf_counter() - self._step_started}, state.global_step)
            if state.global_step % every == 0:
                latest = self.evaluate(model, state.global_step)
                if stop_at is not None and select is not None and latest[select] >= stop_at:
                    control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            metrics.add({f"{log_prefix}/{k}": v for k, v in logs.items()}, state.global_step)
            if completions_per_step and "completions/mean_length" in logs:  # logging_steps=1: one log a step
                self.tokens_sampled += logs["completions/mean_length"] * completions_per_step
                self.completions += completions_per_step

        def on_save(self, args, state, control, **kwargs):
            metrics.flush()

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if state.global_step > self.last_step:  # the steps after the last evaluation count too
                self.evaluate(model, state.global_step)
            metrics.flush()

    return HeldoutEval()
