"""The GPU benchmark's world: a ~100M-parameter Llama on the demo tokenizer, pretrained briefly on the demo skills,
a supervised `add` teacher, and a scratch home where the base is the champion.

The model is the demo world's own (`demo_world.model.build_tiny_model`) at another shape: hidden 768, 12 layers,
12 heads, FFN 2688, 128 positions (102.6M parameters with its 71-token vocabulary), so no hub is needed. It is
pretrained with the demo world's recipe (`demo_world.pretrain`, early stopping with the base weak at `add` and
good at the core skills) at a learning rate fit for its size, under bf16 autocast on a GPU. The teacher is the
base fine-tuned by plain cross-entropy on `add` (supervised, fast and strong), as the bench needs a teacher
the student can learn from, not a study of teachers; the teacher *stage* (GRPO) is measured separately.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from continual_opd.adopt import adopt_model
from continual_opd.batch_io import batch_digest, write_jsonl
from continual_opd.decoding import skill_accuracy
from continual_opd.home import current_home, prepare_stores
from continual_opd.modelio import pick_device, save_model_atomic
from continual_opd.records import AcceptedBatch, ModelRef, Teacher
from demo_world.model import build_tiny_model
from demo_world.pretrain import PretrainConfig, encode_examples, pretrain
from demo_world.skills import CORE_SKILLS, SKILLS
from demo_world.tokenizer import build_tokenizer

STUDENT_MODEL = "bench-gpu-student"
WORLD_FILE = "world.json"


@dataclass(frozen=True)
class Sizes:
    """Every budget of the GPU benchmark; `SMOKE` runs the same machinery on a CPU in minutes."""

    shape: dict = field(default_factory=lambda: dict(hidden=768, layers=12, heads=12, ffn=2688, positions=128))
    pretrain: PretrainConfig = PretrainConfig(lr=3e-4, warmup=100, batch_size=128, max_steps=3000, eval_every=25,
                                              eval_items=200)
    teacher_sft_lr: float = 1e-4
    teacher_sft_steps: int = 400
    teacher_sft_batch: int = 128
    batch_rows: int = 4096  # add rows of the update's batch
    accuracy_items: int = 200  # held-out items for the base's and the teacher's accuracies
    teacher_stage_steps: int = 30
    teacher_stage_prompts: int = 32
    teacher_stage_lr: float = 1e-5
    teacher_warm_start_steps: int = 800  # the stage's default; its rule fires on a base below 5% (the smoke world's)
    check_steps: int = 40  # the precision check: distillation at lr 1e-6
    check_prompts: int = 256
    suite_size: int = 1000
    kl_prompts: int = 512
    short: tuple = (256, 8)  # (prompts per step, completion tokens) of the two step-time shapes
    long: tuple = (128, 64)
    warmup_steps: int = 2
    measured_steps: int = 8


GPU = Sizes()
SMOKE = Sizes(shape=dict(hidden=64, layers=2, heads=2, ffn=128, positions=128),
              pretrain=PretrainConfig(lr=3e-3, warmup=5, batch_size=32, max_steps=20, eval_every=10, eval_items=20),
              teacher_sft_lr=1e-3, teacher_sft_steps=5, teacher_sft_batch=32, batch_rows=256, accuracy_items=20,
              teacher_stage_steps=2, teacher_stage_prompts=4, teacher_warm_start_steps=4, check_steps=2,
              check_prompts=16, suite_size=20, kl_prompts=16, short=(16, 8), long=(8, 16), warmup_steps=1,
              measured_steps=2)


def autocast():
    """bf16 autocast on a GPU (how the world is trained fast), nothing on a CPU."""
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=pick_device() == "cuda")


def prepare(work: Path, sizes: Sizes, log=print) -> dict:
    """Build, pretrain and save the base; fine-tune and save the teacher; adopt the base as champion; write the
    batch. Returns (and writes to `work/world.json`) what the other parts need."""
    import torch

    device = pick_device()
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = sizes.shape["positions"]
    model = build_tiny_model(tokenizer, seed=0, **sizes.shape).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"world: {parameters / 1e6:.1f}M parameters on {device}")
    note = ""
    with autocast():
        try:
            report = pretrain(model, tokenizer, sizes.pretrain, log=log)
            pretrain_steps, pretrain_seconds = report["steps"], report["seconds"]
        except RuntimeError as exc:  # outside the early-stopping band: keep the model as trained, say so
            note, pretrain_steps, pretrain_seconds = str(exc), sizes.pretrain.max_steps, float("nan")
            log(f"world: {note}")
        base_acc = accuracies(model, tokenizer, sizes.accuracy_items)
    save_model_atomic(model, tokenizer, work / "base")
    teacher_steps, teacher_acc = fine_tune_on_add(model, tokenizer, sizes)
    save_model_atomic(model, tokenizer, work / "teacher")
    log(f"world: base {base_acc}; teacher add {teacher_acc['add']:.3f} after {teacher_steps} steps")

    home = prepare_stores(current_home())
    champion = adopt_model(work / "base", STUDENT_MODEL, home)
    teacher = Teacher(model=ModelRef(name="bench-gpu-sft-teacher", version="1", folder=str(work / "teacher")),
                      skill="add", initial_accuracy=base_acc["add"], accuracy=teacher_acc["add"], steps=teacher_steps)
    items = SKILLS["add"].items("train", sizes.batch_rows, seed=2026)
    path = write_jsonl(items, work / "add-batch.jsonl")
    batch = AcceptedBatch(path=str(path), digest=batch_digest(items), skill="add", rows=len(items),
                          contract_version="bench")
    world = {"device": device, "parameters": parameters, "shape": sizes.shape, "pretrain": asdict(sizes.pretrain),
             "pretrain_steps": pretrain_steps, "pretrain_seconds": pretrain_seconds, "pretrain_note": note,
             "base_accuracy": base_acc, "teacher_accuracy": teacher_acc, "teacher_sft_steps": teacher_steps,
             "champion": champion.model_dump(), "teacher": teacher.model_dump(), "batch": batch.model_dump()}
    (work / WORLD_FILE).write_text(json.dumps(world, indent=1))
    return world


def load_world(work: Path) -> tuple[dict, ModelRef, Teacher, AcceptedBatch]:
    world = json.loads((work / WORLD_FILE).read_text())
    records = (ModelRef, Teacher, AcceptedBatch)
    return (world, *(kind.model_validate_json(json.dumps(world[key]))
                     for kind, key in zip(records, ("champion", "teacher", "batch"), strict=True)))


def accuracies(model, tokenizer, n: int, skills=("add", *CORE_SKILLS)) -> dict[str, float]:
    """Greedy held-out accuracy per skill on `n` items (the project's one decoder)."""
    return {s: skill_accuracy(model, tokenizer, SKILLS[s].items("heldout", n, seed=7), SKILLS[s].verify)[0]
            for s in skills}


def fine_tune_on_add(model, tokenizer, sizes: Sizes, stop_at: float = 0.95) -> tuple[int, dict[str, float]]:
    """Plain cross-entropy on `add` answers (in place), checked every 50 steps; returns (steps, accuracies)."""
    import torch

    items = SKILLS["add"].items("train", 4096, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=sizes.teacher_sft_lr)
    step, acc = 0, {}
    for step in range(1, sizes.teacher_sft_steps + 1):
        model.train()
        chunk = [items[(step * sizes.teacher_sft_batch + i) % len(items)] for i in range(sizes.teacher_sft_batch)]
        ids, attn, labels = encode_examples(tokenizer, [(it.prompt, it.answer) for it in chunk], model.device)
        with autocast():
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == sizes.teacher_sft_steps:
            with autocast():
                acc = accuracies(model, tokenizer, sizes.accuracy_items, ("add",))
            if acc["add"] >= stop_at:
                break
    model.eval()
    with autocast():
        return step, accuracies(model, tokenizer, sizes.accuracy_items)
