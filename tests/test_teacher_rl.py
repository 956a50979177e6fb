"""The teacher RL stage: the teacher gate, reuse of an identical teacher, and a real GRPO run on `add`."""

import pickle

import pytest

from demo_world.skills import CATALOGUE as DEMO_CATALOGUE


@pytest.fixture(scope="module")
def add_batch(tmp_path_factory):
    """An accepted `add` batch made by hand (the data contract is another stage)."""
    from continual_opd.records import AcceptedBatch
    from demo_world.skills import CATALOGUE
    from continual_opd.batch_io import batch_digest, write_jsonl

    items = CATALOGUE["add"].items("train", 512, seed=1)
    path = write_jsonl(items, tmp_path_factory.mktemp("batch") / "b.jsonl")
    return AcceptedBatch(path=str(path), digest=batch_digest(items), skill="add", rows=len(items),
                         contract_version="test")


@pytest.fixture()
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine two threads made a GRPO step 20x slower (0.16 s -> 4 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _versions(key: str):
    from continual_opd import registry

    return [v for v in registry.client().search_model_versions(f"name='{registry.TEACHER_MODEL}'")
            if v.tags.get("registration_key") == key]


def _key(batch, champion, cfg, reward=None):
    from demo_world.skills import CATALOGUE
    from tasks.rewards import exact_match
    from tasks.teacher_rl import resolve_initial_model, teacher_key

    _, initial = resolve_initial_model(cfg, champion)
    return teacher_key(batch.skill, batch.digest, initial, cfg, [(reward or exact_match(CATALOGUE["add"]), 1.0)])


def test_rewards_score_completions_with_the_verifier():
    from demo_world.skills import CATALOGUE
    from tasks.rewards import exact_match, format_reward

    skill = CATALOGUE["add"]
    exact, fmt = exact_match(skill).for_trl(), format_reward(skill).for_trl()
    assert exact.__name__ == "exact_match_v1" and fmt.__name__ == "well_formed_v1"
    completions = ["46", "46 ", "45", "4x"]
    assert exact(prompts=["12+34="] * 4, completions=completions, answer=["46"] * 4) == [1.0, 0.0, 0.0, 0.0]
    assert fmt(prompts=["12+34="] * 4, completions=completions, answer=["46"] * 4) == [1.0, 0.0, 1.0, 0.0]
    chat = [[{"role": "assistant", "content": "46"}]]  # what TRL passes for chat-template models
    assert exact(prompts=[[{"role": "user", "content": "12+34="}]], completions=chat, answer=["46"]) == [1.0]


def test_config_is_strict_and_init_is_checked(champion):
    from pydantic import ValidationError

    from tasks.teacher_rl import TeacherConfig, resolve_initial_model

    with pytest.raises(ValidationError, match="lerning_rate"):
        TeacherConfig(lerning_rate=1e-4)
    with pytest.raises(ValidationError, match="num_generations"):
        TeacherConfig(num_generations=1)  # GRPO needs a group to compare
    with pytest.raises(ValueError, match="registry:<name>/<version>"):
        resolve_initial_model(TeacherConfig(init="registry:no-version"), champion)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_initial_model(TeacherConfig(init="/nonexistent/model"), champion)
    folder, identity = resolve_initial_model(TeacherConfig(), champion)
    assert str(folder) == champion.folder and identity == f"{champion.name}/{champion.version}"
    folder, identity = resolve_initial_model(TeacherConfig(init=f"registry:{champion.name}/{champion.version}"),
                                             champion)
    assert identity == f"{champion.name}/{champion.version}" and (folder / "config.json").is_file()


def test_a_skill_with_few_heldout_prompts_splits_what_it_has():
    """The selection set comes from the held-out split's selection part, the teacher gate's from its gate part: a
    small skill gets what each part holds rather than borrowing the other's items."""
    from continual_opd.suites import part_of
    from demo_world.skills import CATALOGUE
    from tasks.teacher_rl import TeacherConfig, heldout_sets

    mul = CATALOGUE["mul"]  # 192 held-out prompts, 45 : 147 between the parts; the defaults ask for 200 + 400
    every = mul.items("heldout", 192)
    eval_set, gate_set, dropped = heldout_sets(mul, [], TeacherConfig())
    assert len(eval_set) + len(gate_set) == len(every) and dropped == 0, "all mul has, split between the parts"
    assert 30 <= len(eval_set) <= 70 and len(gate_set) == len(every) - len(eval_set)
    assert {part_of("mul", it.prompt) for it in eval_set} == {"selection"}
    assert {part_of("mul", it.prompt) for it in gate_set} == {"gate"}
    add = CATALOGUE["add"]
    eval_set, gate_set, _ = heldout_sets(add, [], TeacherConfig())
    assert (len(eval_set), len(gate_set)) == (200, 400), "a skill with enough prompts gets what was asked"
    assert not {it.id for it in eval_set} & {it.id for it in gate_set}
    assert {part_of("add", it.prompt) for it in eval_set} == {"selection"}
    with pytest.raises(ValueError, match="too few.*train split"):
        heldout_sets(mul, every[1:], TeacherConfig())  # a batch made of the held-out prompts


def test_gate_rejects_a_teacher_that_did_not_improve(add_batch, champion, home):
    """Zero RL steps: the 'teacher' is its initial model, which cannot beat itself by the margin."""
    from tasks.teacher_rl import TeacherConfig, TeacherGateFailed, teacher_folder, train_teacher

    cfg = TeacherConfig(steps=0, gate_margin=0.1)
    with pytest.raises(TeacherGateFailed) as failed:
        train_teacher(add_batch, champion, cfg, DEMO_CATALOGUE, home)
    err = failed.value
    assert err.accuracy == err.initial_accuracy and err.margin == 0.1
    assert f"{err.accuracy:.3f}" in str(err) and "margin 0.100" in str(err)
    assert pickle.loads(pickle.dumps(err)).args == err.args  # survives Prefect's result serialisation
    assert _versions(_key(add_batch, champion, cfg)) == []  # nothing registered as a teacher
    assert not teacher_folder(home, _key(add_batch, champion, cfg)).exists()


def test_second_identical_request_reuses_the_teacher(add_batch, champion, home):
    """A registered teacher is found by its key and returned again; a changed config trains a new one."""
    from tasks.teacher_rl import TeacherConfig, train_teacher

    cfg = TeacherConfig(steps=0, gate_margin=0.0, seed=7)  # margin 0: the untrained copy passes, cheaply
    first = train_teacher(add_batch, champion, cfg, DEMO_CATALOGUE, home)
    second = train_teacher(add_batch, champion, cfg, DEMO_CATALOGUE, home)
    assert not first.reused and second.reused
    assert second.model == first.model and second.accuracy == first.accuracy and second.run_id == first.run_id
    assert len(_versions(_key(add_batch, champion, cfg))) == 1
    other = train_teacher(add_batch, champion, TeacherConfig(steps=0, gate_margin=0.0, seed=8), DEMO_CATALOGUE, home)
    assert not other.reused and other.model.version != first.model.version


@pytest.mark.slow
def test_gate_rejects_a_reward_that_pays_everything(add_batch, champion, home, one_torch_thread):
    """Reward hacking in its purest form: a reward of 1 for any output. Training reward is perfect, the
    verifier on held-out items sees no progress, and the gate says no."""
    from continual_opd import registry
    from tasks.rewards import RewardFunction
    from tasks.teacher_rl import TeacherConfig, TeacherGateFailed, train_teacher

    always_one = RewardFunction("always_one", "1", lambda completion, answer: 1.0)
    cfg = TeacherConfig(steps=20, eval_every=10, gate_margin=0.1, prompts_per_step=8, num_generations=4)
    with pytest.raises(TeacherGateFailed) as failed:
        train_teacher(add_batch, champion, cfg, DEMO_CATALOGUE, home, reward_fn=always_one)
    client = registry.client()
    run = client.get_run(failed.value.run_id)
    assert run.data.tags["teacher_gate"] == "failed" and run.info.status == "FAILED"
    rewards = client.get_metric_history(run.info.run_id, "rl/reward")
    assert len(rewards) == 20 and all(m.value == 1.0 for m in rewards)
    assert failed.value.accuracy < failed.value.initial_accuracy + 0.1
    assert _versions(_key(add_batch, champion, cfg, always_one)) == []


@pytest.mark.slow
def test_grpo_teaches_add_and_registers_the_teacher_with_lineage(champion, home, tmp_path, one_torch_thread):
    import mlflow

    from continual_opd import registry
    from continual_opd.decoding import skill_accuracy
    from continual_opd.modelio import load_model
    from continual_opd.records import AcceptedBatch
    from demo_world.skills import CATALOGUE
    from continual_opd.batch_io import batch_digest, write_jsonl
    from tasks.teacher_rl import TeacherConfig, train_teacher

    skill = CATALOGUE["add"]
    items = skill.items("train", 2048, seed=2)  # RL on 512 rows overfits them: more rows, more held-out gain
    batch = AcceptedBatch(path=str(write_jsonl(items, tmp_path / "add.jsonl")), digest=batch_digest(items),
                          skill="add", rows=len(items), contract_version="test")
    registry.client()
    with mlflow.start_run(experiment_id=registry.experiment_id("continual-updates"), run_name="update") as parent:
        pass
    # on items neither training nor the gate's checks choose on; the early stop is relative to the base, which the
    # pretraining recipe leaves anywhere from 35% to 65% on add
    probe = skill.items("heldout", 300, seed=99)
    base_acc, _ = skill_accuracy(*load_model(champion.folder), probe, skill.verify)
    cfg = TeacherConfig(steps=100, eval_every=20, early_stop_accuracy=min(0.95, base_acc + 0.25), gate_margin=0.1)
    teacher = train_teacher(batch, champion, cfg, DEMO_CATALOGUE, home, parent_run_id=parent.info.run_id)
    assert teacher.accuracy >= teacher.initial_accuracy + 0.1 and 0 < teacher.steps <= 100 and not teacher.reused

    # the registered folder holds the trained weights: it beats the base on the probe
    teacher_acc, _ = skill_accuracy(*load_model(teacher.model.folder), probe, skill.verify)
    assert teacher_acc >= base_acc + 0.05

    version = registry.get_version(registry.TEACHER_MODEL, teacher.model.version)
    for tag in ("skill", "data_digest", "initial_model", "reward", "reward_name", "reward_version", "config_hash",
                "code_revision", "flow_run_id"):
        assert tag in version.tags
    assert version.tags["skill"] == "add" and version.tags["data_digest"] == batch.digest
    assert version.tags["initial_model"] == f"{champion.name}/{champion.version}"
    assert version.tags["reward_name"] == "exact_match" and version.tags["config_hash"] == cfg.config_hash()

    client = registry.client()
    run = client.get_run(teacher.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.data.tags["teacher_gate"] == "passed"
    curve = client.get_metric_history(teacher.run_id, "heldout/add_acc")
    assert curve[0].step == 0 and len(curve) >= 2
    assert len(client.get_metric_history(teacher.run_id, "rl/rewards/exact_match_v1/mean")) >= teacher.steps
    assert run.data.metrics["teacher/tokens_sampled"] > 0 and run.data.metrics["teacher/wall_seconds"] > 0
