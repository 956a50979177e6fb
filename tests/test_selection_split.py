"""No choice inside an update reads an item of a gate suite: the selection part and the gate part never meet.

A skill's held-out split is cut by a second hash into a selection part (every choice inside an update) and a gate
part (the gate's suites, the teacher gate). The first tests prove the cut for the three kinds of skill: generated
(the demo world's), file skills, and a file skill too small to give much to either part. The last two run the
teacher stage and the distillation stage and record the items their choices read (the accuracy curves that pick
the teacher's checkpoint and stop it early, the warm-start rule and its stop, the cold-target rule): pointing a
stage at the gate's items fails them.
"""

import json

import pytest

from continual_opd.batch_io import load_batch
from continual_opd.skill_files import load_catalogue
from continual_opd.skills import split_of
from continual_opd.suites import (SELECTION_FRACTION, all_suite_items, build_suites, part_of, part_items,
                                  selection_suites)
from demo_world.skills import CATALOGUE
from tests.helpers.quick_models import make_batch, make_teacher


def _file_catalogue(tmp_path, heldout_rows: int):
    """A file skill with `heldout_rows` held-out rows (explicit train and held-out files) and a core file skill."""
    rows = lambda lo, n: "".join(json.dumps({"a": a, "b": 3, "answer": f"#### {a + 3}"}) + "\n"  # noqa: E731
                                 for a in range(lo, lo + n))
    (tmp_path / "train.jsonl").write_text(rows(0, 300))
    (tmp_path / "heldout.jsonl").write_text(rows(1000, heldout_rows))
    (tmp_path / "echo.jsonl").write_text("".join(json.dumps({"word": f"w{i}", "answer": f"w{i}"}) + "\n"
                                                 for i in range(400)))
    (tmp_path / "skills.yaml").write_text(
        "skills:\n"
        "  - {id: plus, role: target, data: {train: train.jsonl, heldout: heldout.jsonl}, prompt: 'What is {a} plus "
        "{b}?', extract: 'after:####', verifier: numeric}\n"
        "  - {id: echo, role: core, data: {file: echo.jsonl, heldout_fraction: 0.3}, prompt: 'Echo {word}', "
        "verifier: exact}\n")
    return load_catalogue([tmp_path / "skills.yaml"])


def _in_heldout(catalogue):
    heldout = {name: {it.prompt for it in catalogue[name].items("heldout", 10_000)} for name in catalogue}
    return lambda name, prompt: prompt in heldout[name]


def _assert_disjoint(catalogue, names, in_heldout, sizes=(10, 300), seeds=(0, 31337)):
    """Selection items of every size and seed are off the gate's suite; both parts hold held-out items only."""
    for name in names:
        gate = {it.prompt for it in build_suites(catalogue, [name])[name]}
        assert gate and all(part_of(name, p) == "gate" and in_heldout(name, p) for p in gate)
        for size in sizes:
            for seed in seeds:
                chosen = {it.prompt for it in selection_suites(catalogue, [name], size, seed=seed)[name]}
                assert not chosen & gate, f"{name}: a selection item (size {size}, seed {seed}) is in the gate suite"
                assert all(part_of(name, p) == "selection" and in_heldout(name, p) for p in chosen), name


def test_the_parts_of_generated_skills_never_meet_at_any_size_or_seed():
    names = [*CATALOGUE.targets, *CATALOGUE.core]
    _assert_disjoint(CATALOGUE, names, lambda name, prompt: split_of(name, prompt) == "heldout")
    # the parts cover the held-out split in the stated proportion (mul: 192 held-out prompts in all)
    mul = CATALOGUE["mul"].items("heldout", 10_000)
    chosen, gate = part_items(CATALOGUE["mul"], "selection", 10_000, 0), part_items(CATALOGUE["mul"], "gate", 10_000, 0)
    assert len(chosen) + len(gate) == len(mul) == 192
    assert abs(len(chosen) / len(mul) - SELECTION_FRACTION) < 0.08
    # the data contract keeps both parts out of training batches
    contract = {it.prompt for it in all_suite_items(CATALOGUE, 200)}
    assert {it.prompt for it in chosen} <= contract and {it.prompt for it in gate} <= contract


def test_the_parts_of_file_skills_never_meet(tmp_path):
    catalogue = _file_catalogue(tmp_path, heldout_rows=400)
    _assert_disjoint(catalogue, ["plus", "echo"], _in_heldout(catalogue))
    assert len(selection_suites(catalogue, ["plus"], 1000)["plus"]) >= 60, "a 400-row held-out file gives ~100"


def test_a_small_file_skill_gets_a_small_selection_part_never_the_gates_items(tmp_path):
    catalogue = _file_catalogue(tmp_path, heldout_rows=12)
    _assert_disjoint(catalogue, ["plus"], _in_heldout(catalogue), sizes=(1, 5, 12, 100))
    chosen = selection_suites(catalogue, ["plus"], 100)["plus"]
    gate = build_suites(catalogue, ["plus"], 100)["plus"]
    assert len(chosen) + len(gate) == 12, "every held-out row is in exactly one part"


def _recording(monkeypatch, module, reads: list):
    """Wrap `module.heldout_callback` (the curves that choose) so every item it is given is recorded."""
    real = module.heldout_callback

    def recording(tokenizer, eval_sets, *args, **kwargs):
        reads.extend(it for items in eval_sets.values() for it in items)
        return real(tokenizer, eval_sets, *args, **kwargs)

    monkeypatch.setattr(module, "heldout_callback", recording)


def _recording_measure(monkeypatch, reads: list):
    """Wrap `rules.measure` (the rules' measurement) so the items it scores are recorded, selection and batch apart."""
    from continual_opd import rules

    real = rules.measure

    def recording(model, tokenizer, verify, selection, batch, **kwargs):
        reads.append((list(selection), list(batch)))
        return real(model, tokenizer, verify, selection, batch, **kwargs)

    monkeypatch.setattr(rules, "measure", recording)


def _assert_off_the_gate(measured, batch_prompts):
    """The rules read selection items and the batch's own (train-split) prompts, and no item of the gate part."""
    assert measured, "the rules measured"
    for selection, batch in measured:
        assert selection and all(part_of(it.skill, it.prompt) == "selection" for it in selection), \
            "a rule read an item of the gate part"
        assert batch and {it.prompt for it in batch} <= batch_prompts, "a rule read prompts that are not the batch's"
        assert all(split_of(it.skill, it.prompt) == "train" for it in batch), "the batch holds held-out prompts"


@pytest.mark.slow
def test_the_teacher_stage_chooses_and_warm_starts_on_selection_items_only(tmp_path, champion, home, monkeypatch,
                                                                           torch_threads):
    """mul (the champion scores 0): the warm-start rule fires, the warm start stops on selection items, GRPO's
    curve picks the best checkpoint on them; only the teacher gate reads gate items, and only its own set."""
    from tasks import teacher_rl
    from tasks.teacher_rl import TeacherConfig, heldout_sets, train_teacher

    choices, warm_reads, accuracy_reads, measured = [], [], [], []
    _recording(monkeypatch, teacher_rl, choices)
    _recording_measure(monkeypatch, measured)
    real_warm, real_accuracy = teacher_rl.warm_start, teacher_rl.skill_accuracy
    monkeypatch.setattr(teacher_rl, "warm_start", lambda model, tok, rows, skill, cat, eval_set, **kw: (
        warm_reads.extend(eval_set), real_warm(model, tok, rows, skill, cat, eval_set, **kw))[1])
    monkeypatch.setattr(teacher_rl, "skill_accuracy", lambda model, tok, items, *a, **kw: (
        accuracy_reads.append(list(items)), real_accuracy(model, tok, items, *a, **kw))[1])

    batch = make_batch(tmp_path, n=256, skill="mul")
    cfg = TeacherConfig(steps=2, prompts_per_step=4, num_generations=2, eval_every=1, eval_items=40, gate_items=60,
                        gate_margin=0.0, warm_start={"settings": {"steps": 2}}, registered_model="test-sel-teacher")
    train_teacher(batch, champion, cfg, CATALOGUE, home)
    _, gate_set, _ = heldout_sets(CATALOGUE["mul"], [], cfg)
    assert choices and warm_reads, "the curve and the warm start ran"
    assert all(part_of(it.skill, it.prompt) == "selection" for it in [*choices, *warm_reads]), \
        "a choice of the teacher stage read an item of the gate part"
    _assert_off_the_gate(measured, {it.prompt for it in load_batch(batch.path)})  # the warm-start rule
    for items in accuracy_reads:  # the teacher gate, on its own set
        assert [it.id for it in items] == [it.id for it in gate_set], "an accuracy measured on other items"


@pytest.mark.slow
def test_distillations_curve_and_cold_target_rule_read_selection_items_only(tmp_path, champion, base_folder, home,
                                                                            monkeypatch, torch_threads):
    from tasks import distill_training
    from tasks.distill import distill
    from tasks.distill_config import DistillConfig

    choices, measured = [], []
    _recording(monkeypatch, distill_training, choices)
    _recording_measure(monkeypatch, measured)
    teacher = make_teacher(base_folder, tmp_path / "teacher", steps=2)
    cfg = DistillConfig(steps=2, prompts_per_step=16, eval_every=1, eval_items=50, checkpoint_every=2,
                        cold_target={"settings": {"steps": 2}}, max_reference_nll=50.0,
                        registered_model="test-sel-student")
    batch = make_batch(tmp_path, n=64, skill="mul")
    candidate = distill(batch, champion, teacher, cfg, CATALOGUE, home)
    assert candidate.metrics["cold_target"] == 1.0, "mul is cold: the rule measured and fired"
    assert {it.skill for it in choices} >= {"mul", *CATALOGUE.core}
    assert all(part_of(it.skill, it.prompt) == "selection" for it in choices), \
        "distillation's curve read an item of the gate part"
    _assert_off_the_gate(measured, {it.prompt for it in load_batch(batch.path)})  # the cold-target rule
