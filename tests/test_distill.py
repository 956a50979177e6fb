"""The distillation stage: routed per-row reverse KL, guards, resuming, registration, the baseline methods."""

import pytest

from continual_opd.records import ModelRef, Teacher
from demo_world.skills import CATALOGUE
from tests.helpers.quick_models import make_batch, make_teacher

TEST_MODEL = "test-distill-student"  # own registered model, so other tests' `candidate` alias is untouched


# ------------------------------------------------------------------------------------------- helpers


def tiny_cfg(**overrides):
    from tasks.distill_config import DistillConfig

    settings = dict(steps=4, prompts_per_step=16, eval_every=2, eval_items=20, checkpoint_every=2,
                    registered_model=TEST_MODEL)
    return DistillConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def teacher(base_folder, tmp_path_factory):
    return make_teacher(base_folder, tmp_path_factory.mktemp("teacher") / "teacher")


# ------------------------------------------------------------------------------- the routed loss


def _fixed_batch(tokenizer, rows, routes):
    """Left-padded prompts, right-padded completions (some without EOS), as TRL builds them."""
    import torch

    pad = tokenizer.pad_token_id
    prompts = [tokenizer(p)["input_ids"] for p, _ in rows]
    completions = [tokenizer(c, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
                   for (_, (c, eos)) in rows]
    width_p, width_c = max(map(len, prompts)), max(map(len, completions))
    return {
        "prompt_ids": torch.tensor([[pad] * (width_p - len(p)) + p for p in prompts]),
        "prompt_mask": torch.tensor([[0] * (width_p - len(p)) + [1] * len(p) for p in prompts]),
        "completion_ids": torch.tensor([c + [pad] * (width_c - len(c)) for c in completions]),
        "completion_mask": torch.tensor([[1] * len(c) + [0] * (width_c - len(c)) for c in completions]),
        "route": torch.tensor(routes),
    }


def _reverse_kl_per_row(student, teacher, batch):
    """KL(student || teacher) summed over each row's completion tokens, from full logits (plain torch)."""
    import torch

    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    start = batch["prompt_ids"].size(1) - 1  # the logit at position t predicts token t + 1
    log_s = torch.log_softmax(student(input_ids=ids, attention_mask=attn).logits[:, start:-1].float(), -1)
    with torch.no_grad():
        log_t = torch.log_softmax(teacher(input_ids=ids, attention_mask=attn).logits[:, start:-1].float(), -1)
    per_token = (log_s.exp() * (log_s - log_t)).sum(-1) * batch["completion_mask"]
    return per_token.sum(-1)


def test_each_row_loss_is_reverse_kl_to_its_own_teacher(tmp_path):
    import torch
    from datasets import Dataset
    from trl import DistillationConfig

    from demo_world.model import build_tiny_model
    from demo_world.tokenizer import build_tokenizer
    from tasks.routed_distillation import RoutedDistillationTrainer

    torch.set_num_threads(1)
    tok = build_tokenizer()
    student, target_teacher, anchor = (build_tiny_model(tok, seed=s) for s in (0, 1, 2))
    with torch.no_grad():  # untrained models are near uniform: sharpen the teachers so they clearly disagree
        target_teacher.model.norm.weight.mul_(3.0)
        anchor.model.norm.weight.mul_(6.0)
    args = DistillationConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                              per_device_train_batch_size=4, max_completion_length=4, beta=1.0)
    data = Dataset.from_list([{"prompt": "1+1=", "route": "target"}] * 4)
    trainer = RoutedDistillationTrainer(student, {"target": target_teacher, "anchor": anchor}, args=args,
                                        train_dataset=data, processing_class=tok)
    rows = [("12+34=", ("46", True)), ("rev:abc=", ("cba", True)), ("up:hello=", ("HEL", False)),
            ("99+10=", ("1", False))]
    routes = [0, 1, 1, 0]  # target, anchor, anchor, target
    batch = _fixed_batch(tok, rows, routes)
    tokens = batch["completion_mask"].sum(-1).float()

    # Independently: each row against its own teacher, and against the other one (must differ).
    own = torch.stack([_reverse_kl_per_row(student, target_teacher if r == 0 else anchor, batch)[i]
                       for i, r in enumerate(routes)])
    other = torch.stack([_reverse_kl_per_row(student, anchor if r == 0 else target_teacher, batch)[i]
                         for i, r in enumerate(routes)])
    assert ((own - other).abs() / own > 0.05).all(), "the two teachers must disagree for this test to mean anything"

    # Row by row: the trainer's loss on a one-row batch is that row's mean reverse KL to its own teacher.
    for i in range(len(rows)):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        loss, _, n = trainer._compute_loss(student, one, None)
        assert int(n) == int(tokens[i])
        torch.testing.assert_close(loss, own[i].detach() / tokens[i], rtol=1e-4, atol=1e-6)

    # The whole batch: the token-weighted sum of the rows, normalised once, and the same gradients.
    loss, _, _ = trainer._compute_loss(student, batch, None)
    expected = own.sum() / tokens.sum()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-4, atol=1e-6)
    grads = torch.autograd.grad(loss, list(student.parameters()), allow_unused=True)
    expected_grads = torch.autograd.grad(expected, list(student.parameters()), allow_unused=True)
    for g, e in zip(grads, expected_grads, strict=True):
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-6)
    metrics, own = trainer._metrics["train" if trainer.model.training else "eval"], own.detach()
    assert metrics["kl/target"][-1] == pytest.approx(float((own[0] + own[3]) / (tokens[0] + tokens[3])), rel=1e-4)
    assert metrics["kl/anchor"][-1] == pytest.approx(float((own[1] + own[2]) / (tokens[1] + tokens[2])), rel=1e-4)


# --------------------------------------------------------------------------------------- guards


def test_weight_decay_reaches_the_optimizer_and_spares_norms_and_biases(tmp_path, base_folder, teacher):
    """`weight_decay` is AdamW's: every weight matrix decays by it, norm weights and biases do not."""
    import torch

    from continual_opd.modelio import load_model
    from tasks.distill_training import routed_trainer

    torch.set_num_threads(1)
    champion = ModelRef(name="base", version="1", folder=str(base_folder))
    student, tok = load_model(base_folder, device="cpu")
    trainer = routed_trainer(student, tok, CATALOGUE["add"].items("train", 16, seed=5), champion, teacher,
                             tiny_cfg(weight_decay=0.25), CATALOGUE, tmp_path / "work")
    optimizer = trainer.create_optimizer()
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(trainer.model.named_parameters())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {decay_of[id(p)] for n, p in named.items() if p.ndim == 2} == {0.25}
    assert {decay_of[id(p)] for n, p in named.items() if "norm" in n or n.endswith("bias")} == {0.0}


def _versions(registry) -> set[str]:
    return {str(v.version) for v in registry.client().search_model_versions(f"name='{TEST_MODEL}'")}


def test_replay_covers_the_core_skills_and_the_targets_taught_before(home):
    """A second update must not erase the first: earlier promoted targets join the replay (the anchor route)."""
    import uuid
    from collections import Counter

    from demo_world.skills import CORE_SKILLS, SKILLS
    from continual_opd import accuracy_matrix
    from tasks.distill import replay_skills, taught_teachers
    from tasks.distill_config import ANCHOR_ROUTE, TARGET_ROUTE, DistillConfig
    from tasks.distill_training import training_rows

    model = f"replay-test-{uuid.uuid4().hex[:8]}"
    accuracy_matrix.append_row(home, model, "1", "baseline")
    accuracy_matrix.append_row(home, model, "2", "promoted", target_skill="add")
    accuracy_matrix.append_row(home, model, "3", "rejected", target_skill="mul")  # never taught: not replayed
    cfg = DistillConfig(steps=5, prompts_per_step=40, replay_fraction=0.25, taught_replay_weight=1.0)
    assert replay_skills(cfg, CATALOGUE, "sub", home, model) == [*CORE_SKILLS, "add"]
    # the target itself is taught, not replayed
    assert replay_skills(cfg, CATALOGUE, "add", home, model) == list(CORE_SKILLS)
    # own teachers: version 2 is not in the registry here, so add is replayed against the champion, not an error
    assert taught_teachers(home, model, ["add"]) == {}
    no_taught = cfg.model_copy(update={"taught_replay_weight": 0.0})  # 0: no taught replay
    assert replay_skills(no_taught, CATALOGUE, "sub", home, model) == list(CORE_SKILLS)

    rows = training_rows(SKILLS["sub"].items("train", 64), cfg, CATALOGUE,
                         replay_skills(cfg, CATALOGUE, "sub", home, model))
    for step in range(cfg.steps):
        chunk = rows[step * 40:(step + 1) * 40]
        assert Counter(r["route"] for r in chunk) == {TARGET_ROUTE: 30, ANCHOR_ROUTE: 10}
    replayed = Counter(r["skill"] for r in rows if r["route"] == ANCHOR_ROUTE)
    assert set(replayed) == {*CORE_SKILLS, "add"} and max(replayed.values()) - min(replayed.values()) <= 2
    # the defaults: half of each step is replay, and a taught skill gets 8 shares against 1 per core skill
    default = DistillConfig(steps=20, prompts_per_step=64)
    rows = training_rows(SKILLS["sub"].items("train", 64), default, CATALOGUE, [*CORE_SKILLS, "add"])
    replayed = Counter(r["skill"] for r in rows if r["route"] == ANCHOR_ROUTE)
    assert sum(replayed.values()) == 20 * 32
    assert replayed["add"] == pytest.approx(20 * 32 * 8 / 12, abs=2)
    assert all(replayed[c] == pytest.approx(20 * 32 / 12, abs=2) for c in CORE_SKILLS)
    # a skill with few train prompts (mul: 528) is repeated rather than refused
    many = DistillConfig(steps=200, prompts_per_step=256)
    mul_rows = training_rows(SKILLS["sub"].items("train", 64), many, CATALOGUE, ["mul"])
    assert sum(r["skill"] == "mul" for r in mul_rows) == many.steps * many.replay_per_step


def test_a_cold_target_trains_longer_with_more_replay_and_its_curve_shows_the_taught_skills():
    """The cold-target rule (routed methods): below its `below` it sets its settings, 1,200 steps, 62.5% of
    each step replay and AdamW decay 1.0, whatever the update was configured with (the rule sets, it does not
    merely raise); opd_no_replay still replays nothing; grpo and sft are never touched; a rule given in part keeps
    the rest of the default's, `below: 0` turns it off, and a setting the stage does not have is refused. The
    held-out curve covers the target, the core skills and each replayed taught skill."""
    from collections import Counter

    from pydantic import ValidationError

    from continual_opd.suites import suite_names
    from demo_world.skills import CORE_SKILLS, SKILLS
    from flows.params import load_params
    from tasks.distill_config import ANCHOR_ROUTE, COLD_TARGET, TARGET_ROUTE, DistillConfig
    from tasks.distill_training import apply_rules, training_rows

    COLD = {"accuracy": 0.0, "items": 700.0}  # a champion that answers none of the rule's measurement items
    cfg = DistillConfig(prompts_per_step=64)
    assert cfg.cold_target == COLD_TARGET and 0 < COLD_TARGET.below < 0.07, "a 7% sub is not cold"
    assert cfg.weight_decay == 0.0 and cfg.replay_fraction == 0.5
    cold, fired, metrics = apply_rules(cfg, {"accuracy": 0.0, "items": 700.0})
    assert fired == ["cold_target"] and metrics == {"cold_target/champion_accuracy": 0.0,
                                                    "cold_target/measured_items": 700.0, "cold_target": 1.0}
    assert (cold.steps, cold.replay_fraction, cold.weight_decay) == (1200, 0.625, 1.0)
    assert cold.model_dump() == {**cfg.model_dump(), "steps": 1200, "replay_fraction": 0.625, "weight_decay": 1.0}
    for accuracy in (cfg.cold_target.below, 0.5):  # at or above `below`: the settings asked for train
        same, fired, metrics = apply_rules(cfg, {"accuracy": accuracy, "items": 700.0})
        assert same == cfg and fired == [] and metrics == {"cold_target/champion_accuracy": accuracy,
                                                           "cold_target/measured_items": 700.0, "cold_target": 0.0}
    assert apply_rules(cfg, None) == (cfg, [], {}), "no measurement, no rule"
    # the rule sets its values: more decay or replay than it sets is lowered to them, none is raised to them
    for asked in ({"weight_decay": 2.0}, {"replay_fraction": 0.8}, {"replay_fraction": 0.0}):
        after, _, _ = apply_rules(cfg.model_copy(update=asked), COLD)
        assert (after.replay_fraction, after.weight_decay) == (0.625, 1.0), asked
    no_replay, fired, _ = apply_rules(cfg.model_copy(update={"method": "opd_no_replay"}), COLD)
    assert fired == ["cold_target"] and no_replay.steps == 1200 and no_replay.replay_per_step == 0
    for method in ("grpo", "sft_teacher_samples"):  # the rule is the routed methods'
        other = cfg.model_copy(update={"method": method})
        assert apply_rules(other, COLD) == (other, [], {}), method

    # given in part (a YAML section, a Python dict, or `--set`): the rest is the default's
    part = DistillConfig(cold_target={"settings": {"steps": 6}})
    assert part.cold_target.below == COLD_TARGET.below
    assert part.cold_target.settings == {"steps": 6, "replay_fraction": 0.625, "weight_decay": 1.0}
    assert apply_rules(part, COLD)[0].steps == 6 and apply_rules(part, COLD)[0].weight_decay == 1.0
    params = load_params("b.jsonl", overrides=["distill.cold_target.settings.steps=6"])
    assert params.distill.cold_target == part.cold_target
    off = DistillConfig(cold_target={"below": 0.0})
    assert off.cold_target.settings == cfg.cold_target.settings
    assert apply_rules(off, COLD)[1] == [], "below 0 never fires"
    with pytest.raises(ValidationError, match="stepz"):
        DistillConfig(cold_target={"settings": {"stepz": 6}})

    few = cold.model_copy(update={"steps": 3})
    rows = training_rows(SKILLS["mul"].items("train", 64), few, CATALOGUE, [*CORE_SKILLS, "add", "sub"])
    for step in range(few.steps):
        routes = Counter(r["route"] for r in rows[step * 64:(step + 1) * 64])
        assert routes == {ANCHOR_ROUTE: round(64 * 0.625), TARGET_ROUTE: 64 - round(64 * 0.625)} == {
            ANCHOR_ROUTE: 40, TARGET_ROUTE: 24}
    assert suite_names(CATALOGUE, "mul", [*CORE_SKILLS, "add", "sub"]) == ["mul", *CORE_SKILLS, "add", "sub"]
    assert suite_names(CATALOGUE, "add", list(CORE_SKILLS)) == ["add", *CORE_SKILLS]


class _RulesApplied(Exception):
    """Raised by the test's `on_rules`: the rule has decided, nothing trains."""


@pytest.mark.parametrize("skill, champion_accuracy, fires", [("sub", 0.0, True), ("sub", 0.07, False),
                                                              ("mul", 0.0, True)])
def test_the_cold_target_rule_measures_the_champion_on_selection_items_and_the_batch_never_the_gate(
        monkeypatch, tmp_path, skill, champion_accuracy, fires):
    """The rule reads the champion's accuracy on the target's `eval_items` selection-part items (all of them where
    the skill has fewer: sub and mul), minus the batch's prompts, and on the batch's own prompts: never the gate's
    items. A 7% sub is not cold. `on_rules` gets the settings after the rule, before anything trains."""
    from continual_opd import rules, training
    from continual_opd.suites import build_suites, part_items, part_of
    from demo_world.skills import SKILLS
    from tasks import distill_training
    from tasks.distill_config import DistillConfig

    scored, measured = {}, []

    def fake_accuracy(model, tokenizer, items, verify, max_new_tokens):
        scored[items[0].skill] = list(items)
        return (champion_accuracy if items[0].skill == skill else 1.0), []

    def fake_measure(model, tokenizer, items, verify, max_new_tokens):
        measured.extend(items)
        return champion_accuracy, []

    class Log:
        def add(self, *a, **k):
            pass

        flush = add

    decided = {}

    def on_rules(cfg, fired):
        decided.update(cfg=cfg, fired=fired)
        raise _RulesApplied

    monkeypatch.setattr(training, "skill_accuracy", fake_accuracy)
    monkeypatch.setattr(rules, "skill_accuracy", fake_measure)
    monkeypatch.setattr(distill_training, "load_model", lambda folder: (None, None))
    cfg = DistillConfig()
    assert cfg.eval_items == 300
    targets = SKILLS[skill].items("train", 32, seed=1)
    with pytest.raises(_RulesApplied):
        distill_training.train_candidate(targets, SKILLS[skill], ModelRef(name="c", version="1", folder="unused"),
                                         None, cfg, CATALOGUE, tmp_path, Log(), [], [], on_rules=on_rules)
    read = scored[skill]
    selection = part_items(SKILLS[skill], "selection", cfg.eval_items, seed=31337)
    assert [it.id for it in read] == [it.id for it in selection], "the target's selection items, in draw order"
    assert all(part_of(skill, it.prompt) == "selection" for it in read)
    gate = {it.id for it in build_suites(CATALOGUE, [skill])[skill]}
    assert not {it.id for it in read} & gate
    assert not {it.prompt for it in read} & {it.prompt for it in targets}
    whole_part = part_items(SKILLS[skill], "selection", 1000, seed=0)  # sub: about 250, mul: about 45
    assert len(read) == min(cfg.eval_items, len(whole_part)) and len(whole_part) < cfg.eval_items
    assert set(scored) == {skill, *CATALOGUE.core}, "the curve covers the target and the core skills"
    assert [it.id for it in measured] == [it.id for it in [*read, *targets]], \
        "the rule measures the selection items and the batch's prompts"
    assert not {it.id for it in measured} & gate, "the rule read an item of the gate's suite"
    assert decided["fired"] == (["cold_target"] if fires else [])
    assert decided["cfg"].steps == (1200 if fires else cfg.steps)


def test_teacher_with_another_vocabulary_is_refused_before_training(tmp_path, champion, home):
    from continual_opd import registry
    from continual_opd.modelio import save_model_atomic
    from demo_world.model import build_tiny_model
    from demo_world.tokenizer import build_tokenizer
    from tasks.distill import DistillationGuardError, distill

    tok = build_tokenizer()
    tok.add_tokens(["#"])  # one more token: 70 instead of 69
    save_model_atomic(build_tiny_model(tok), tok, tmp_path / "alien")
    alien = Teacher(model=ModelRef(name="test-teacher", version="901", folder=str(tmp_path / "alien")),
                    skill="add", initial_accuracy=0.0, accuracy=0.0, steps=0)
    before = _versions(registry)
    with pytest.raises(DistillationGuardError, match="different vocabularies"):
        distill(make_batch(tmp_path), champion, alien, tiny_cfg(seed=101), CATALOGUE, home)
    assert _versions(registry) == before, "nothing may be registered"


def test_untrained_teacher_is_stopped_by_the_step0_guard(tmp_path, champion, home):
    """A never-trained model of the same vocabulary is near uniform: its NLL of the reference answers is about
    ln(69) = 4.2 nats per token whatever the base, above the default bound of 3."""
    from continual_opd import registry
    from continual_opd.modelio import save_model_atomic
    from demo_world.model import build_tiny_model
    from demo_world.tokenizer import build_tokenizer
    from tasks.distill import DistillationGuardError, distill

    tok = build_tokenizer()
    save_model_atomic(build_tiny_model(tok, seed=5), tok, tmp_path / "random")  # same vocabulary, never trained
    broken = Teacher(model=ModelRef(name="test-teacher", version="902", folder=str(tmp_path / "random")),
                     skill="add", initial_accuracy=0.0, accuracy=0.0, steps=0)
    before = _versions(registry)
    with pytest.raises(DistillationGuardError, match="max_reference_nll=3.0"):
        distill(make_batch(tmp_path), champion, broken, tiny_cfg(seed=102), CATALOGUE, home)
    assert _versions(registry) == before, "nothing may be registered"


# ------------------------------------------------------------------------ training, resume, registry


class Interrupted(RuntimeError):
    pass


@pytest.mark.slow
def test_interrupted_run_resumes_and_registers_a_candidate_with_lineage(tmp_path, champion, teacher, home):
    import mlflow
    from transformers import TrainerCallback

    from continual_opd import registry
    from continual_opd.modelio import load_model
    from continual_opd.fingerprint import training_code
    from tasks.distill import TRAINING_CODE, candidate_key, distill, replay_skills
    from tasks.distill_training import last_complete_checkpoint

    class InterruptAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise Interrupted(f"interrupted after saving step {state.global_step}")

    batch, cfg = make_batch(tmp_path), tiny_cfg(seed=103)
    before = _versions(registry)
    with pytest.raises(Interrupted):
        distill(batch, champion, teacher, cfg, CATALOGUE, home, callbacks=[InterruptAfterFirstSave()])
    assert _versions(registry) == before, "an interrupted run registers nothing"
    replayed = replay_skills(cfg, CATALOGUE, "add", home, champion.name)
    key = candidate_key(batch, champion, teacher, cfg, CATALOGUE, replayed)
    work = home.checkpoints / f"distill-{key.split(':')[-1][:16]}"
    saved = last_complete_checkpoint(work / "trainer")
    assert saved is not None and saved.name == "checkpoint-2"

    with mlflow.start_run(experiment_id=registry.experiment_id("continual-updates")) as parent:
        candidate = distill(batch, champion, teacher, cfg, CATALOGUE, home, parent_run_id=parent.info.run_id)
    assert candidate.metrics["resumed_from_step"] == 2
    assert candidate.metrics["steps"] == cfg.steps
    assert not work.exists(), "checkpoints are removed once the candidate is registered"

    # Registered with alias `candidate` and the lineage tags; the folder is complete and loadable.
    version = registry.get_version(TEST_MODEL, candidate.model.version)
    assert str(registry.aliases(TEST_MODEL)[registry.CANDIDATE]) == candidate.model.version
    # add is not cold (the recipe stops the base at add >= 0.35): no rule fired, so what trained is what was asked
    expected = {"parent_version": champion.version, "teacher_model": teacher.model.name,
                "teacher_version": teacher.model.version, "data_digest": batch.digest,
                "config_hash": cfg.config_hash(), "requested_config_hash": cfg.config_hash(), "rules_fired": "none",
                "method": "opd", "role": "candidate", "cold_target": "false", "lora_rank": "0", "replay_teachers": "",
                "skill": "add", "registration_key": key, "code_fingerprint": training_code(TRAINING_CODE)}
    assert {k: version.tags.get(k) for k in expected} == expected
    assert version.tags["code_revision"] and "flow_run_id" in version.tags and version.tags["model_folder"]
    assert "alpha" not in version.tags
    assert candidate.parent_version == champion.version and candidate.method == "opd"
    load_model(candidate.model.folder, device="cpu")

    # The stage run is nested under the update's run and holds the training curves.
    run = registry.client().get_run(candidate.run_id)
    assert run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    assert run.data.tags["rules_fired"] == "none" and run.data.tags["config_hash"] == cfg.config_hash()
    assert {k: run.data.params[f"cfg.{k}"] for k in ("steps", "replay_fraction", "weight_decay")} == {
        "steps": str(cfg.steps), "replay_fraction": str(cfg.replay_fraction), "weight_decay": str(cfg.weight_decay)}
    for name in ("train/kl/target", "train/kl/anchor", "train/entropy", "train/completions/mean_length",
                 "train/tokens_sampled", "step_seconds", "heldout/add_acc", "heldout/copy_acc", "initial_kl/target",
                 "initial/teacher_reference_nll"):
        assert name in run.data.metrics, name

    again = distill(batch, champion, teacher, cfg, CATALOGUE, home)  # idempotent: the same version, nothing retrained
    assert again.model.version == candidate.model.version and _versions(registry) == before | {again.model.version}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft_teacher_samples", "grpo"])
def test_baseline_methods_train_and_register(tmp_path, champion, teacher, home, method):
    from continual_opd import registry
    from tasks.distill import distill

    cfg = tiny_cfg(method=method, steps=2, eval_every=2, seed=105)
    candidate = distill(make_batch(tmp_path), champion, teacher, cfg, CATALOGUE, home)
    assert candidate.method == method and candidate.metrics["steps"] == 2
    assert registry.get_version(TEST_MODEL, candidate.model.version).tags["method"] == method


@pytest.mark.slow
def test_a_lora_update_registers_a_plain_candidate_with_lineage(tmp_path, champion, teacher, home):
    """LoRA trains through TRL's `peft_config`; the adapter is merged before saving, and the rank is in the
    lineage tags."""
    import torch

    from continual_opd import registry
    from continual_opd.modelio import load_model
    from tasks.distill import distill

    cfg = tiny_cfg(lora_rank=4, steps=2, eval_every=2, seed=106)
    candidate = distill(make_batch(tmp_path), champion, teacher, cfg, CATALOGUE, home)
    tags = registry.get_version(TEST_MODEL, candidate.model.version).tags
    assert tags["lora_rank"] == "4" and "alpha" not in tags
    folder = registry.local_folder(registry.get_version(TEST_MODEL, candidate.model.version))
    assert not (folder / "adapter_config.json").exists()
    trained, _ = load_model(folder, device="cpu")
    start, _ = load_model(champion.folder, device="cpu")
    start = start.state_dict()
    assert set(trained.state_dict()) == set(start)
    assert any(not torch.equal(v, start[k]) for k, v in trained.state_dict().items())


def test_taught_replay_rows_are_scored_by_the_teacher_that_taught_them(tmp_path):
    """`replay_teachers='own'`: add replay rows go to route taught:add, whose teacher is loaded from the add
    teacher's folder; core replay stays with the anchor; each route's loss is against its own teacher."""
    import torch

    from continual_opd.modelio import save_model_atomic
    from demo_world.model import build_tiny_model
    from demo_world.tokenizer import build_tokenizer
    from tasks.distill_config import ANCHOR_ROUTE, TARGET_ROUTE, DistillConfig
    from tasks.distill_training import routed_trainer

    torch.set_num_threads(1)
    tok = build_tokenizer()
    folders = {}
    for name, seed, sharpen in (("champion", 0, 1.0), ("sub-teacher", 1, 3.0), ("add-teacher", 2, 6.0)):
        model = build_tiny_model(tok, seed=seed)
        with torch.no_grad():
            model.model.norm.weight.mul_(sharpen)
        folders[name] = save_model_atomic(model, tok, tmp_path / name)
    champion = ModelRef(name="c", version="1", folder=str(folders["champion"]))
    sub_teacher = Teacher(model=ModelRef(name="t", version="2", folder=str(folders["sub-teacher"])), skill="sub",
                          initial_accuracy=0.0, accuracy=0.0, steps=0)
    cfg = DistillConfig(steps=2, prompts_per_step=24, max_completion_length=4)
    targets = CATALOGUE["sub"].items("train", 32, seed=1)
    trainer = routed_trainer(build_tiny_model(tok, seed=0), tok, targets, champion, sub_teacher, cfg, CATALOGUE,
                             tmp_path / "work", [*CATALOGUE.core, "add"],
                             own_teachers={"add": str(folders["add-teacher"])})
    assert trainer.route_names == [TARGET_ROUTE, ANCHOR_ROUTE, "taught:add"]
    assert trainer.route_betas == {ANCHOR_ROUTE: 1.0, "taught:add": 1.0} and trainer.beta == 0.0
    for row in trainer.train_dataset:
        want = TARGET_ROUTE if row["skill"] == "sub" else "taught:add" if row["skill"] == "add" else ANCHOR_ROUTE
        assert row["route"] == want, row
    add_teacher = build_tiny_model(tok, seed=2)
    with torch.no_grad():
        add_teacher.model.norm.weight.mul_(6.0)
    for name, tensor in add_teacher.state_dict().items():
        torch.testing.assert_close(trainer.teachers["taught:add"].state_dict()[name], tensor)

    # Each row's loss is against its own route's teacher: reverse KL on replay routes, forward KL on target rows.
    student = trainer.model
    batch = _fixed_batch(tok, [("12-3=", ("9", True)), ("5+6=", ("11", True)), ("rev:ab=", ("ba", True))],
                         [0, 2, 1])
    tokens = batch["completion_mask"].sum(-1).float()
    reverse = {i: _reverse_kl_per_row(student, t, batch)[i] for i, t in
               ((1, trainer.teachers["taught:add"]), (2, trainer.teachers[ANCHOR_ROUTE]))}
    for i in (1, 2):
        loss, _, _ = trainer._compute_loss(student, {k: v[i:i + 1] for k, v in batch.items()}, None)
        torch.testing.assert_close(loss, reverse[i].detach() / tokens[i], rtol=1e-4, atol=1e-6)
    wrong = _reverse_kl_per_row(student, trainer.teachers[ANCHOR_ROUTE], batch)[1]
    own_kl = float(reverse[1].detach())
    assert abs(float(wrong.detach()) - own_kl) / own_kl > 0.05, "the add teacher must differ from the anchor"
    loss, _, _ = trainer._compute_loss(student, {k: v[0:1] for k, v in batch.items()}, None)
    forward = _forward_kl_per_row(student, trainer.teachers[TARGET_ROUTE], batch)[0]
    torch.testing.assert_close(loss, forward.detach() / tokens[0], rtol=1e-4, atol=1e-6)


def _forward_kl_per_row(student, teacher, batch):
    """KL(teacher || student) summed over each row's completion tokens, from full logits (TRL's beta = 0)."""
    import torch

    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    start = batch["prompt_ids"].size(1) - 1
    log_s = torch.log_softmax(student(input_ids=ids, attention_mask=attn).logits[:, start:-1].float(), -1)
    with torch.no_grad():
        log_t = torch.log_softmax(teacher(input_ids=ids, attention_mask=attn).logits[:, start:-1].float(), -1)
    per_token = (log_t.exp() * (log_t - log_s)).sum(-1) * batch["completion_mask"]
    return per_token.sum(-1)
