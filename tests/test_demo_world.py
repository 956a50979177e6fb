"""The demo world: tokenizer, skills, splits, model folders, bootstrap."""

import pytest

from demo_world.skills import CORE_SKILLS, REFUSAL, SKILLS, TARGET_SKILLS, split_of


@pytest.fixture(scope="module")
def tokenizer():
    from demo_world.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.mark.parametrize("skill", list(SKILLS))
def test_tokenizer_round_trips_every_skill_string(tokenizer, skill):
    for item in SKILLS[skill].items("train", 200) + SKILLS[skill].items("heldout", 50):
        for text in (item.prompt, item.answer, item.prompt + item.answer):
            ids = tokenizer(text)["input_ids"]
            assert tokenizer.unk_token_id not in ids
            assert ids[0] == tokenizer.bos_token_id
            assert len(ids) == len(text) + 1  # one token per character, plus BOS
            assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_marks_unknown_characters(tokenizer):
    assert tokenizer.unk_token_id in tokenizer("12 + 3=é")["input_ids"]


@pytest.mark.parametrize("skill", list(SKILLS))
def test_verifier_accepts_right_and_rejects_wrong_answers(skill):
    s = SKILLS[skill]
    for item in s.items("heldout", 50):
        assert s.verify(item.answer, item.answer)
        assert s.well_formed(item.answer)
        assert not s.verify(item.answer + "0", item.answer)
        assert not s.verify("", item.answer)
        assert not s.verify(item.answer.swapcase() if item.answer.isalpha() else item.answer[:-1], item.answer)
        assert s.verify_lenient(f" {item.answer.swapcase()} ", item.answer)
        assert not s.verify_lenient(item.answer + "0", item.answer)


def test_arithmetic_answers_are_correct():
    for item in SKILLS["add"].items("train", 100):
        a, b = item.prompt[:-1].split("+")
        assert int(item.answer) == int(a) + int(b)
    for item in SKILLS["sub"].items("train", 100):
        a, b = item.prompt[:-1].split("-")
        assert int(item.answer) == int(a) - int(b) >= 0


def test_refusal_is_the_answer_to_marked_prompts_only():
    for item in SKILLS["refuse"].items("train", 200):
        assert "!" in item.prompt and item.answer == REFUSAL
    for skill in CORE_SKILLS + TARGET_SKILLS:
        if skill != "refuse":
            assert all(it.answer != REFUSAL and "!" not in it.prompt for it in SKILLS[skill].items("train", 200))


@pytest.mark.parametrize("skill", list(SKILLS))
def test_train_and_heldout_never_share_a_prompt(skill):
    s = SKILLS[skill]
    n = {"mul": 150, "sub": 700}.get(skill, 1000)
    train = {it.prompt for it in s.items("train", n * 3, seed=1)}
    heldout = {it.prompt for it in s.items("heldout", n, seed=2)}
    assert train and heldout and not train & heldout
    assert all(split_of(skill, p) == "heldout" for p in heldout)


def test_items_are_reproducible_and_distinct():
    a = SKILLS["add"].items("train", 300, seed=7)
    assert a == SKILLS["add"].items("train", 300, seed=7)
    assert len({it.prompt for it in a}) == 300
    assert a != SKILLS["add"].items("train", 300, seed=8)


def test_saved_model_reloads_with_identical_logits(tokenizer, tmp_path):
    import torch

    from continual_opd.modelio import load_model, save_model_atomic
    from demo_world.model import build_tiny_model

    model = build_tiny_model(tokenizer, seed=3)
    folder = save_model_atomic(model, tokenizer, tmp_path / "m")
    assert list(folder.glob("*.safetensors")) and not list(tmp_path.glob(".m.tmp-*"))
    loaded, tok = load_model(folder, device="cpu")
    ids = tok(["12+34=", "rev:abc="], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, loaded(**ids).logits)
    assert tok.padding_side == "left" and len(tok) == len(tokenizer)
    n = sum(p.numel() for p in model.parameters())
    assert 0.8e6 < n < 0.9e6


def test_model_folder_errors_say_what_is_wrong(tmp_path, tokenizer):
    from continual_opd.modelio import ModelFolderError, check_model_folder

    with pytest.raises(ModelFolderError, match="does not exist"):
        check_model_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="no config.json"):
        check_model_folder(tmp_path / "empty")
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "config.json").write_text('{"auto_map": {"AutoModel": "x.Y"}}')
    with pytest.raises(ModelFolderError, match="remote code"):
        check_model_folder(tmp_path / "remote")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text("{}")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelFolderError, match="safetensors"):
        check_model_folder(tmp_path / "pickled")


def test_unwritable_home_is_a_clear_error(tmp_path):
    """A home below a plain file cannot be created, even by root (CI runs as root, so no chmod test)."""
    from continual_opd.home import Home, HomeError

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(HomeError, match="not writable.*CONTINUAL_OPD_HOME"):
        Home(tmp_path / "file" / "home").ensure()


@pytest.mark.slow
def test_base_is_good_at_core_and_weak_at_targets(base_folder):
    """The pretrained base, measured on fresh held-out items, sits inside the bands the demo promises."""
    from continual_opd.decoding import skill_accuracy
    from continual_opd.modelio import load_model

    model, tok = load_model(base_folder, device="cpu")
    acc = {s: skill_accuracy(model, tok, SKILLS[s].items("heldout", 400, seed=99), SKILLS[s].verify)[0]
           for s in (*CORE_SKILLS, "add", "sub")}
    assert all(acc[c] >= 0.95 for c in CORE_SKILLS), acc
    assert 0.25 <= acc["add"] <= 0.65, acc
    assert acc["sub"] < 0.6, acc


@pytest.mark.slow
def test_bootstrap_registers_one_champion_and_is_idempotent(home, base_folder):
    from continual_opd import registry
    from demo_world.bootstrap import bootstrap

    first = bootstrap(home)
    again = bootstrap(home)
    assert first == again
    versions = registry.client().search_model_versions(f"name='{registry.STUDENT_MODEL}'")
    bases = [v for v in versions if v.tags.get("role") == "base"]
    assert len(bases) == 1
    champ = registry.version_by_alias(registry.STUDENT_MODEL, registry.CHAMPION)
    assert str(champ.version) == first.version
    assert champ.tags["method"] == "pretrain" and float(champ.tags["acc.copy"]) >= 0.95
