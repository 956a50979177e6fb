"""Clear errors before any training: unreadable model folders, tokenizers that differ, a missing chat template,
remote code that was not enabled."""

import json
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """Two tiny Qwen2 folders with different tokenizers, and one copy of the first without a chat template."""
    from tools.tinymodels import build_qwen2

    root = tmp_path_factory.mktemp("qwen")
    a = build_qwen2(root / "a", ["What is 1 plus 2?", "#### 3", "Echo cat1"] * 20, vocab_size=300)
    b = build_qwen2(root / "b", ["Quelle est la somme de 1 et 2 ?", "réponse 3"] * 20, vocab_size=300)
    plain = root / "plain"
    shutil.copytree(a, plain)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in plain.glob("chat_template.*"):
        f.unlink()
    return {"a": a, "b": b, "plain": plain}


def _skills():
    from continual_opd.skill_files import load_skill_file

    return load_skill_file(DATA / "skills.yaml").values()


def test_a_teacher_with_another_tokenizer_is_refused_and_the_error_says_it_is_not_supported(qwen):
    from continual_opd.compat import IncompatibleModels, check_update_models

    with pytest.raises(IncompatibleModels, match="tokenizers of student .* differ.*is not supported") as err:
        check_update_models(qwen["a"], str(qwen["b"]), _skills())
    assert str(qwen["b"]) in str(err.value)
    check_update_models(qwen["a"], str(qwen["a"]), _skills())  # the same tokenizer passes
    check_update_models(qwen["a"], "champion", _skills())


def test_a_chat_skill_needs_a_chat_template(qwen):
    from continual_opd.compat import IncompatibleModels, check_chat_template, check_update_models
    from continual_opd.modelio import load_tokenizer

    assert not load_tokenizer(qwen["plain"]).chat_template
    with pytest.raises(IncompatibleModels, match="plus_words, echo declare chat: true.*no chat template"):
        check_update_models(qwen["plain"], "champion", _skills())
    from demo_world.skills import SKILLS

    check_chat_template(load_tokenizer(qwen["plain"]), SKILLS.values())  # demo skills use raw prompts


def test_unreadable_model_folders_are_named(qwen, tmp_path):
    from continual_opd.modelio import ModelFolderError, load_model, load_tokenizer

    with pytest.raises(ModelFolderError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    broken = tmp_path / "broken"
    shutil.copytree(qwen["a"], broken)
    (broken / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ModelFolderError, match=f"{broken}.*tokenizer could not be loaded"):
        load_tokenizer(broken)
    torn = tmp_path / "torn"
    shutil.copytree(qwen["a"], torn)
    (torn / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelFolderError, match=f"{torn} could not be loaded"):
        load_model(torn, device="cpu")


def test_remote_code_is_refused_unless_enabled(qwen, tmp_path):
    from continual_opd.compat import check_update_models
    from continual_opd.modelio import ModelFolderError, check_model_folder

    remote = tmp_path / "remote"
    shutil.copytree(qwen["a"], remote)
    cfg = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModelForCausalLM": "m.M"}}))
    with pytest.raises(ModelFolderError, match="needs remote code.*trust_remote_code: true"):
        check_update_models(qwen["a"], str(remote), _skills())
    assert check_model_folder(remote, trust_remote_code=True) == remote
