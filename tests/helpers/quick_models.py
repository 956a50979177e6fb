"""Batches and teachers that tests can make in seconds (no GRPO): shared by the distillation and gate tests."""

from continual_opd.records import AcceptedBatch, ModelRef, Teacher


def make_batch(tmp_path, n=256, skill="add") -> AcceptedBatch:
    """An accepted batch of `n` train items of `skill`, written as jsonl (the contract is not run)."""
    from demo_world.skills import SKILLS
    from continual_opd.batch_io import batch_digest, write_jsonl

    items = SKILLS[skill].items("train", n, seed=7)
    path = write_jsonl(items, tmp_path / f"{skill}.jsonl")
    return AcceptedBatch(path=str(path), digest=batch_digest(items), skill=skill, rows=n, contract_version="test")


def make_teacher(base_folder, dest, steps=20, version="900") -> Teacher:
    """A teacher made quickly: a copy of the base trained by plain cross-entropy on `add` (tests only)."""
    import torch

    from continual_opd.modelio import load_model, save_model_atomic
    from demo_world.pretrain import encode_examples
    from demo_world.skills import SKILLS

    torch.manual_seed(0)
    model, tok = load_model(base_folder, device="cpu")
    items = SKILLS["add"].items("train", 64 * steps, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        chunk = items[step * 64:(step + 1) * 64]
        ids, attn, labels = encode_examples(tok, [(it.prompt, it.answer) for it in chunk], "cpu")
        model(input_ids=ids, attention_mask=attn, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    save_model_atomic(model, tok, dest)
    return Teacher(model=ModelRef(name="test-teacher", version=version, folder=str(dest)), skill="add",
                   initial_accuracy=0.0, accuracy=0.0, steps=steps)
