"""YAML-declared skills: every verifier kind, data loading, the catalogue, and errors that name the field."""

import json
from pathlib import Path

import pytest

from continual_opd import skill_files as cat
from continual_opd.skills import Catalogue, UnknownSkill
from continual_opd.suites import suite_names

DATA = Path(__file__).parent / "data"
DEMO_YAML = Path(__file__).resolve().parents[1] / "configs" / "skills" / "demo.yaml"


def _write(tmp_path, entries, rows=None, name="skills.yaml"):
    import yaml

    if rows is not None:
        with open(tmp_path / "rows.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"skills": entries}))
    return path


def _skill(tmp_path, rows, **entry):
    base = {"id": "s", "role": "target", "data": {"file": "rows.jsonl", "heldout_fraction": 0.5}}
    return cat.load_skill_file(_write(tmp_path, [{**base, **entry}], rows))["s"]


def test_numeric_verifier_reads_the_final_number_after_the_marker(tmp_path):
    s = _skill(tmp_path, [{"prompt": "2+2", "answer": "so #### 4"}], verifier="numeric", extract="after:####")
    assert s.verify("I think... #### 4", "so #### 4")
    assert s.verify("#### 4.0", "#### 4")
    assert not s.verify("#### 5", "#### 4")
    assert not s.verify("4", "#### 4"), "no marker in the completion: nothing extracted, wrong"
    assert s.well_formed("#### 12") and not s.well_formed("#### twelve")


def test_last_number_extraction_and_numeric_with_commas(tmp_path):
    s = _skill(tmp_path, [{"prompt": "p", "answer": "1,234"}], verifier="numeric", extract="last_number")
    assert s.verify("first 3 then 1,234", "1,234")
    assert not s.verify("1,234 then 3", "1,234")


def test_exact_verifier_and_its_lenient_form(tmp_path):
    s = _skill(tmp_path, [{"prompt": "p", "answer": "Paris"}])
    assert s.verify(" Paris\n", "Paris") and not s.verify("paris", "Paris")
    assert s.verify_lenient("paris", "Paris") and not s.verify_lenient("Lyon", "Paris")


def test_regex_verifier_treats_the_reference_as_a_pattern(tmp_path):
    s = _skill(tmp_path, [{"prompt": "p", "answer": "colou?r"}], verifier="regex", extract="regex:answer: (\\w+)")
    assert s.verify("answer: color", "colou?r") and s.verify("answer: colour", "colou?r")
    assert not s.verify("answer: colr", "colou?r") and not s.verify("color", "colou?r")


def test_choice_verifier_compares_the_chosen_option(tmp_path):
    s = _skill(tmp_path, [{"prompt": "p", "answer": "B"}], verifier="choice", choices=["A", "B", "C", "D"])
    assert s.verify("The answer is b.", "B") and s.verify("B) because", "(B)")
    assert not s.verify("C", "B") and not s.verify("none", "B")


def test_a_yaml_skill_loads_its_data_files_through_the_template_with_disjoint_splits():
    skills = cat.load_skill_file(DATA / "skills.yaml")
    plus = skills["plus_words"]
    assert plus.role == "target" and skills["echo"].role == "core"
    rows = [json.loads(line) for line in (DATA / "plus_words.jsonl").read_text().splitlines()]
    train, held = plus.items("train", 10_000), plus.items("heldout", 10_000)
    assert len(train) + len(held) == len(rows) and held
    assert not {i.prompt for i in train} & {i.prompt for i in held}
    first = next(i for i in train + held if i.prompt == f"What is {rows[0]['a']} plus {rows[0]['b']}?")
    assert first.answer == rows[0]["answer"] and plus.verify(f"#### {rows[0]['a'] + rows[0]['b']}", first.answer)
    assert plus.items("train", 5, seed=1) == plus.items("train", 5, seed=1) != plus.items("train", 5, seed=2)


def test_separate_train_and_heldout_files_and_parquet(tmp_path):
    import pandas as pd

    pd.DataFrame({"q": ["a", "b"], "answer": ["1", "2"]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"q": ["c"], "answer": ["3"]}).to_parquet(tmp_path / "held.parquet")
    path = _write(tmp_path, [{"id": "p", "role": "core", "prompt": "{q}=",
                              "data": {"train": "train.parquet", "heldout": "held.parquet"}}])
    s = cat.load_skill_file(path)["p"]
    assert sorted(i.prompt for i in s.items("train", 9)) == ["a=", "b="]
    assert [i.answer for i in s.items("heldout", 9)] == ["3"]


@pytest.mark.parametrize("entry, rows, says", [
    ({"id": "s", "role": "boss", "data": {"file": "rows.jsonl"}}, [], "skills[0] (s).role"),
    ({"id": "s", "role": "core", "verifier": "fuzzy", "data": {"file": "rows.jsonl"}}, [], ".verifier"),
    ({"id": "s", "role": "core", "extract": "magic", "data": {"file": "rows.jsonl"}}, [], ".extract"),
    ({"id": "s", "role": "core", "verifier": "choice", "data": {"file": "rows.jsonl"}}, [], ".choices"),
    ({"id": "s", "role": "core", "data": {"file": "nope.jsonl"}}, None, "nope.jsonl does not exist"),
    ({"id": "s", "role": "core", "prompt": "{question}", "data": {"file": "rows.jsonl"}},
     [{"prompt": "p", "answer": "a"}], ".prompt: row 0"),
    ({"id": "s", "role": "core", "answer_field": "label", "data": {"file": "rows.jsonl"}},
     [{"prompt": "p", "answer": "a"}], ".answer_field: row 0"),
    ({"id": "s", "role": "core", "colour": "red", "data": {"file": "rows.jsonl"}}, [], "unknown field(s) ['colour']"),
    ({"id": "a b", "role": "core", "data": {"file": "rows.jsonl"}}, [], "skills[0].id"),
    ({"id": "s", "role": "core", "data": {"train": "rows.jsonl"}}, [], "both train and heldout"),
])
def test_errors_name_the_file_and_the_field(tmp_path, entry, rows, says):
    path = _write(tmp_path, [entry], rows)
    with pytest.raises(cat.SkillFileError) as err:
        cat.load_skill_file(path)
    assert says in str(err.value) and str(path) in str(err.value)


def test_an_unreadable_data_file_is_named(tmp_path):
    (tmp_path / "rows.jsonl").write_text("{not json\n")
    path = _write(tmp_path, [{"id": "s", "role": "core", "data": {"file": "rows.jsonl"}}])
    with pytest.raises(cat.SkillFileError, match="rows.jsonl cannot be read"):
        cat.load_skill_file(path)


def test_a_catalogue_holds_exactly_the_skills_its_files_declare():
    from demo_world.skills import CATALOGUE as DEMO

    catalogue = cat.load_catalogue([str(DATA / "skills.yaml")])
    assert list(catalogue) == ["plus_words", "echo"]
    assert catalogue.core == ("echo",) and catalogue.targets == ("plus_words",)
    assert catalogue["plus_words"].verifier == "numeric"
    with pytest.raises(UnknownSkill, match="unknown skill 'add'.*skills.yaml"):
        catalogue["add"]
    assert suite_names(catalogue, "plus_words") == ["plus_words", "echo"]
    assert "add" in DEMO and "copy" in DEMO.core, "another catalogue in the same process is untouched"
    assert cat.load_catalogue([DATA / "skills.yaml"]) is catalogue, "loaded once while the file is unchanged"


def test_the_demo_world_declared_in_yaml_is_the_demo_world():
    from demo_world import skills as demo

    catalogue = cat.load_catalogue([str(DEMO_YAML)])
    assert dict(catalogue) == demo.SKILLS
    assert catalogue.core == demo.CORE_SKILLS and catalogue.targets == demo.TARGET_SKILLS


def test_a_generator_must_name_a_module_and_one_of_its_skills(tmp_path):
    for spec in ("demo_world:division", "no_such_module:add", "demo_world"):
        path = _write(tmp_path, [{"id": "division", "generator": spec}])
        with pytest.raises(cat.SkillFileError, match="generator: .* is not MODULE:ID"):
            cat.load_skill_file(path)
    with pytest.raises(cat.SkillFileError, match="keeps its id"):
        cat.load_skill_file(_write(tmp_path, [{"id": "plus", "generator": "demo_world:add"}]))


def test_a_catalogue_is_refused_without_files_or_without_a_target(tmp_path):
    with pytest.raises(cat.SkillFileError, match="does not exist"):
        cat.load_catalogue([tmp_path / "missing.yaml"])
    only_core = _write(tmp_path, [{"id": "copy", "generator": "demo_world:copy"}], name="core.yaml")
    with pytest.raises(cat.SkillFileError, match="declare no target skill"):
        cat.load_catalogue([only_core])
    with pytest.raises(ValueError, match="role"):
        Catalogue([type("S", (), {"id": "x", "role": "boss"})()])


def test_the_documented_real_model_config_and_its_skill_file_load(monkeypatch):
    from flows.params import load_params

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # skill paths in a config are relative to the working directory
    params = load_params("batch.jsonl", root / "configs" / "real-models.yaml")
    assert params.skills == ["configs/skills/gsm8k.yaml"]
    skills = cat.load_skill_file(root / params.skills[0])
    gsm = skills["gsm8k"]
    item = next(i for i in gsm.items("heldout", 9) if i.answer.endswith("#### 42"))
    assert gsm.verify("6 bags of 7 is 42.\n#### 42", item.answer) and not gsm.verify("#### 41", item.answer)
    assert skills["capitals"].verify("The capital is Paris.", "Paris")
