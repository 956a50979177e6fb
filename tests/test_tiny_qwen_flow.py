"""The whole flow on a different architecture: a tiny Qwen2 with a locally trained byte-level BPE tokenizer and
a chat template, learning a user's YAML-declared numeric skill (GSM8K-style `#### 19`) from files in tests/data.

The model starts untrained, so the gate may well reject: the test asserts that all five stages ran on it and
that a decision was recorded, not what the decision was.
"""

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.slow


def test_the_flow_runs_all_five_stages_on_a_tiny_qwen2(home, tmp_path, monkeypatch):
    import torch

    from cli.main import main
    from continual_opd import registry
    from continual_opd.adopt import adopt_model
    from continual_opd.batch_io import write_jsonl
    from continual_opd.skill_files import load_skill_file
    from tools.tinymodels import build_qwen2, skill_texts

    torch.set_num_threads(1)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the config names tests/data/skills.yaml
    user_skills = load_skill_file(DATA / "skills.yaml")
    folder = build_qwen2(tmp_path / "tiny-qwen2", skill_texts(user_skills.values()))
    before = adopt_model(folder, "qwen-test-student", home).version
    assert str(registry.aliases("qwen-test-student")[registry.CHAMPION]) == before
    batch = write_jsonl(user_skills["plus_words"].items("train", 64, seed=3), home.inbox / "qwen-plus.jsonl")

    code = main(["run", "--batch", str(batch), "--config", str(DATA / "tiny_qwen.yaml")])

    assert code in (0, 3), "the update ends with a decision: promoted (0) or rejected (3)"
    client = registry.client()
    exp = client.get_experiment_by_name("continual-updates")
    update = client.search_runs([exp.experiment_id], "tags.stage = 'update'", order_by=["start_time DESC"])[0]
    assert update.info.status == "FINISHED" and update.data.tags["champion_version"] == before
    stages = {r.data.tags.get("stage") for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{update.info.run_id}'")}
    assert {"validate", "teacher_rl", "distill", "evaluate"} <= stages, stages
    assert update.data.tags.get("gate_decision") in ("promoted", "rejected"), update.data.tags
    candidate = max(client.search_model_versions("name='qwen-test-student'"), key=lambda v: int(v.version))
    assert candidate.tags["parent_version"] == before and candidate.tags.get("gate_decision")
    teacher = client.search_model_versions("name='qwen-test-teacher'")
    assert teacher, "the teacher was registered under the configured name"
    assert (Path(registry.local_folder(candidate)) / "config.json").read_text().count("Qwen2ForCausalLM")
