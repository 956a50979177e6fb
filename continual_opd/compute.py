"""How the stages use the machine: numeric precision and vLLM rollouts, one section of the flow's parameters.

Precision is a property of the machine an update runs on, not of a stage, so it is one setting
(`compute.precision`) that the flow hands to every stage, and every stage reads it through the two helpers
here: `weights_dtype` for loading a model (`modelio.load_model`) and `bf16_autocast` for the trainer's
arguments (`training.trainer_args`). A stage's plain function takes the section as an optional keyword
(`compute=`) whose default is the CPU-safe `auto`, so tests and scripts call stages as before.

- Trained weights (the student in distillation and its baselines, the teacher in the teacher stage) are
  always fp32 master weights. An AdamW step is about `lr` per weight; bf16 keeps 8 significant bits, so a
  weight of 0.05 moves only by multiples of 2.4e-4: at lr 1e-6 almost every step rounds away and the model
  does not learn (tests/test_precision.py reproduces it on a CPU).
- `bf16-mixed`: the trainers run under bf16 autocast over those fp32 weights; frozen models (teachers when
  scoring, the replay anchor, evaluation) are loaded in bf16 on a GPU: half the memory, no optimizer.
- `fp32`: everything in fp32.
- `auto`: `bf16-mixed` on a CUDA GPU that supports bf16, `fp32` elsewhere (a CPU, an older GPU).

Trained models are saved as trained (fp32): rounding them to bf16 on save would erase small updates too.

Rollouts (`rollouts`, read by `training.rollout_args`): with `auto`, the on-policy stages sample with TRL's
vLLM in colocate mode (it shares the training GPU) when the `vllm` package is installed and a GPU is present,
and with `model.generate` otherwise; `generate` and `vllm` choose one. Two settings bound vLLM's memory.
"""

from typing import Literal

from pydantic import Field

from continual_opd.config import StrictConfig

Precision = Literal["auto", "fp32", "bf16-mixed"]
Rollouts = Literal["auto", "generate", "vllm"]
MIXED = "bf16-mixed"


class ComputeConfig(StrictConfig):
    """How every stage uses the machine (precision, vLLM rollouts); never what an update learns."""

    precision: Precision = Field("auto", description="auto (bf16-mixed on a GPU with bf16, fp32 elsewhere), fp32, "
                                                     "or bf16-mixed (fp32 trained weights under bf16 autocast, "
                                                     "frozen models in bf16 on a GPU).")
    rollouts: Rollouts = Field("auto", description="How the on-policy stages sample: auto (vLLM when installed and "
                                                   "a GPU is present, else model.generate), generate, or vllm.")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1, description="Share of the GPU's memory that vLLM "
                                                                           "reserves for weights and KV cache when "
                                                                           "it samples rollouts beside training.")
    vllm_max_model_length: int | None = Field(None, ge=1, description="Longest prompt + completion vLLM plans its "
                                                                      "KV cache for; empty = the model's own limit "
                                                                      "(often 32k tokens: set it for short tasks).")


DEFAULT_COMPUTE = ComputeConfig()  # what a stage called without `compute=` gets


def _bf16_capable(device: str) -> bool:
    import torch

    return torch.cuda.is_bf16_supported() if device.startswith("cuda") else True  # torch autocasts bf16 on a CPU


def training_precision(precision: Precision, device: str) -> str:
    """`fp32` or `bf16-mixed`: what `precision` means on `device` ("cuda", "cuda:1", "cpu")."""
    if precision == "fp32":
        return "fp32"
    if precision == MIXED:
        if not _bf16_capable(device):
            raise ValueError(f"compute.precision={MIXED} needs bf16, which this GPU lacks (bf16 arrived with "
                             "NVIDIA Ampere): set compute.precision to auto or fp32")
        return MIXED
    return MIXED if device.startswith("cuda") and _bf16_capable(device) else "fp32"


def bf16_autocast(precision: Precision, device: str) -> bool:
    """Whether training runs under bf16 autocast (its weights stay fp32 either way)."""
    return training_precision(precision, device) == MIXED


def weights_dtype(precision: Precision, device: str, *, frozen: bool):
    """The torch dtype of a model's weights: fp32 when trained; bf16 when frozen on a GPU under bf16-mixed."""
    import torch

    mixed_gpu = device.startswith("cuda") and bf16_autocast(precision, device)
    return torch.bfloat16 if frozen and mixed_gpu else torch.float32
