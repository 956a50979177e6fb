"""The data contract: each expectation rejects the batch that breaks it (and only that one), a good batch
passes, contaminated and unreadable batches are quarantined with a clear report, re-sent batches are
recognised by digest, and `continual-opd validate` exits 0 or 2.

No pretrained model is needed: the student's tokenizer is the demo world's, built and saved here.
"""

import json
import os
import pickle
from pathlib import Path

import pytest

from continual_opd.batch_store import BatchStore
from data_contracts import ROWS_SUITE, check_ids, ledger
from cli.validate import validate_command
from continual_opd.batch_io import write_jsonl
from continual_opd.skills import Item
from continual_opd.suites import DEFAULT_SUITE_SIZE, all_suite_items, build_suites, suite_names
from demo_world.skills import CATALOGUE, SKILLS
from tasks.validate import (
    ContractConfig,
    ContractViolation,
    DuplicateBatch,
    UnreadableBatchError,
    check_batch,
    contract_table,
    ensure_new_batch,
    mark_processed,
    student_tokenizer,
    validate_batch,
)

ROWS = 120
DEMO = CATALOGUE
SUITE_SIZE = DEFAULT_SUITE_SIZE


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    """A student model folder (untrained weights: the contract reads only its tokenizer)."""
    from continual_opd.modelio import save_model_atomic
    from demo_world.model import build_tiny_model
    from demo_world.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    folder = tmp_path_factory.mktemp("student") / "model"
    return str(save_model_atomic(build_tiny_model(tokenizer), tokenizer, folder))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_folder):
    return student_tokenizer(tokenizer_folder)


@pytest.fixture()
def fresh_home(fresh_world):
    """A home and a store of their own: inbox, quarantine, and a ledger that no other test wrote to."""
    return fresh_world


def good_items(n=ROWS, seed=11, skill="add"):
    return CATALOGUE[skill].items("train", n, seed=seed)


def replace(items, index, **changes):
    items = list(items)
    it = items[index]
    items[index] = Item(**{"id": it.id, "skill": it.skill, "prompt": it.prompt, "answer": it.answer, **changes})
    return items


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def heldout(skill="add", k=1):
    return build_suites(DEMO, suite_names(DEMO, skill))[skill][:k]


def two_digit_answers():
    return [it for it in good_items(400, seed=12) if len(it.answer) == 2][:ROWS]


def one_long_answer():
    """Two-digit answers but one valid three-digit sum: breaks a 2-token answer bound and nothing else."""
    rows = two_digit_answers()
    extra = next(it for it in good_items(400, seed=12) if len(it.answer) == 3)
    return [extra, *rows[1:]]


def failed_checks(report):
    return {e.check for e in report.failed()}


# One bad batch per expectation of batch_rows.json: (check, how to build the file, contract settings).
def _null(field):
    def build(tmp):
        rows = [it.__dict__ for it in good_items()]
        rows[5] = {**rows[5], field: None}
        return write_rows(tmp / f"null-{field}.jsonl", rows)
    return build


def _bad_utf8(tmp):
    path = write_jsonl(good_items(), tmp / "bad-utf8.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[7] = lines[7].replace(b'"prompt": "', b'"prompt": "\xff', 1)
    path.write_bytes(b"".join(lines))
    return path


def _jsonl(name, items_fn):
    return lambda tmp: write_jsonl(items_fn(), tmp / f"{name}.jsonl")


BAD_BATCHES = {
    "row_count": (_jsonl("short", good_items), {"min_rows": ROWS + 1}),
    "id_present": (_null("id"), {}),
    "skill_present": (_null("skill"), {}),
    "prompt_present": (_null("prompt"), {}),
    "answer_present": (_null("answer"), {}),
    "valid_utf8": (_bad_utf8, {}),
    "unique_ids": (_jsonl("dup-ids", lambda: replace(good_items(), 9, id=good_items()[3].id)), {}),
    "known_skill": (_jsonl("unknown-skill", lambda: replace(good_items(), 2, skill="juggle")), {}),
    "target_skill": (_jsonl("core-rows", lambda: good_items(skill="copy")), {}),
    "single_skill": (_jsonl("two-skills", lambda: good_items(60) + good_items(60, skill="sub")), {}),
    "prompt_not_blank": (_jsonl("blank", lambda: replace(good_items(), 4, prompt="")), {}),
    "unique_prompts": (_jsonl("dup-prompts", lambda: replace(good_items(), 8, prompt=good_items()[1].prompt,
                                                            answer=good_items()[1].answer)), {}),
    "prompt_length": (_jsonl("long-prompt", lambda: replace(good_items(), 6, prompt="1" * 50 + "=")), {}),
    "answer_length": (_jsonl("long-answer", one_long_answer), {"max_answer_tokens": 2}),
    "encodable": (_jsonl("accent", lambda: replace(good_items(), 3, prompt="12+3\u00e9=")), {}),
    "answer_well_formed": (_jsonl("bad-answer", lambda: replace(good_items(), 3, answer="1x5")), {}),
    "not_contaminated": (_jsonl("contaminated", lambda: replace(good_items(), 10, prompt=heldout()[0].prompt,
                                                               answer=heldout()[0].answer)), {}),
}


def test_every_expectation_has_a_bad_batch():
    assert set(BAD_BATCHES) == set(check_ids(ROWS_SUITE))


@pytest.mark.parametrize("check", sorted(BAD_BATCHES))
def test_each_bad_batch_fails_exactly_its_expectation(check, tmp_path, tokenizer):
    build, settings = BAD_BATCHES[check]
    report = check_batch(build(tmp_path), ContractConfig(**settings), DEMO, SUITE_SIZE, tokenizer).report
    assert not report.success
    assert failed_checks(report) == {check}
    failure = report.failed()[0]
    if failure.failing_rows is not None:  # row-level: counted, with the failing row shown
        assert failure.failing_rows >= 1 and failure.examples


def test_good_batch_passes(tmp_path, tokenizer):
    report = check_batch(write_jsonl(good_items(), tmp_path / "good.jsonl"), ContractConfig(), DEMO, SUITE_SIZE, tokenizer).report
    assert report.success, report.message()
    assert report.skill == "add" and report.rows == ROWS and not report.failed()
    assert len(report.expectations) == len(check_ids(ROWS_SUITE))


def test_the_demo_batch_passes(tmp_path, tokenizer):
    """The batch `continual-opd demo` drops into the inbox (512 train rows of add, seed 1000)."""
    items = CATALOGUE["add"].items("train", 512, seed=1000)
    report = check_batch(write_jsonl(items, tmp_path / "demo-add-000.jsonl"), ContractConfig(), DEMO, SUITE_SIZE, tokenizer).report
    assert report.success, report.message()


def test_parquet_batches_are_read_too(tmp_path, tokenizer):
    import pandas as pd

    bad = replace(good_items(), 3, answer="1x5")
    path = tmp_path / "bad.parquet"
    pd.DataFrame([it.__dict__ for it in bad]).to_parquet(path)
    report = check_batch(path, ContractConfig(), DEMO, SUITE_SIZE, tokenizer).report
    assert failed_checks(report) == {"answer_well_formed"}


def test_held_out_items_are_rejected_as_contaminated(tmp_path, fresh_home, tokenizer_folder):
    """Exact suite items of the batch's own gate, of another target skill's gate, and near-copies."""
    sub_item = next(it for it in build_suites(DEMO, ["sub"])["sub"] if len(it.answer) == 2)  # well-formed for add too
    items = good_items()
    items = replace(items, 0, prompt=heldout()[0].prompt, answer=heldout()[0].answer)
    items = replace(items, 1, prompt=f"{heldout('add', 2)[1].prompt}{heldout('add', 2)[1].answer}")  # answer glued on
    items = replace(items, 2, prompt=sub_item.prompt, answer=sub_item.answer, skill="add")
    path = write_jsonl(items, fresh_home.inbox / "leaky.jsonl")
    with pytest.raises(ContractViolation) as caught:
        validate_batch(str(path), ContractConfig(), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home)
    failure = {e.check: e for e in caught.value.report.failed()}
    assert set(failure) == {"not_contaminated"}
    assert failure["not_contaminated"].failing_rows == 3
    assert {ex["row"] for ex in failure["not_contaminated"].examples} == {1, 2, 3}
    assert "suite sub" in str(caught.value)
    assert caught.value.quarantined is not None and caught.value.quarantined.is_file() and not path.exists()


def test_contamination_checks_every_suite_and_spares_training_prompts():
    from data_contracts.contamination import ContaminationIndex

    items = all_suite_items(DEMO)
    index = ContaminationIndex(items, n=10)
    assert {it.skill for it in items} == set(SKILLS)  # every target and every core suite
    core = next(it for it in items if it.skill == "reverse" and len(it.prompt) >= 10)
    assert index.match(core.prompt.upper())  # normalised: case
    assert index.match(" " + " ".join(core.prompt))  # normalised: whitespace
    assert index.match(core.prompt[:-1] + "x=")  # near-copy: shares a 10-character n-gram
    train = [it.prompt for s in ("add", "sub", "copy", "reverse", "upper") for it in good_items(300, skill=s)]
    assert not [p for p in train if index.match(p)]  # the train split never trips it


@pytest.mark.parametrize("name,content,problem", [
    ("batch.csv", b"id,skill,prompt,answer\na,add,12+34=,46\n", "unsupported file type"),
    ("notjson.jsonl", b"id,skill,prompt,answer\na,add,12+34=,46\n", "not valid JSON lines"),
    ("truncated.jsonl", b'{"id": "a", "skill": "add", "prompt": "12+34=", "answer": "46"}\n{"id": "b", "sk', "not valid JSON lines"),
    ("types.jsonl", b'{"id": 1, "skill": "add", "prompt": "12+34=", "answer": "46"}\n', "column 'id' holds int"),
    ("columns.jsonl", b'{"id": "a", "skill": "add", "prompt": "12+34="}\n', "missing column(s) answer"),
    ("empty.jsonl", b"", "empty"),
    ("truncated.parquet", None, "not valid parquet"),
])
def test_unreadable_files_are_quarantined_with_a_clear_error(name, content, problem, fresh_home, tokenizer_folder):
    path = fresh_home.inbox / name
    if content is None:
        import pandas as pd

        pd.DataFrame([it.__dict__ for it in good_items()]).to_parquet(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(UnreadableBatchError) as caught:
        validate_batch(str(path), ContractConfig(), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home)
    assert str(path) in str(caught.value) and problem in str(caught.value)
    assert problem in caught.value.problem
    assert not path.exists() and caught.value.quarantined == fresh_home.quarantine / name
    assert caught.value.quarantined.is_file()
    assert problem in Path(f"{caught.value.quarantined}.report.md").read_text()
    assert contract_table(caught.value.report)[0]["result"] == "FAILED"


def test_violation_message_report_and_artifacts(fresh_home, tokenizer_folder):
    from mlflow import MlflowClient

    items = replace(replace(good_items(), 9, id=good_items()[3].id), 4, answer="1x5")
    path = write_jsonl(items, fresh_home.inbox / "two-problems.jsonl")
    with pytest.raises(ContractViolation) as caught:
        validate_batch(str(path), ContractConfig(), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home)
    exc = caught.value
    message = str(exc)
    assert str(path) in message and "2 of" in message
    assert "unique_ids" in message and "2 of 120 rows fail" in message and good_items()[3].id in message
    assert "answer_well_formed" in message and "'1x5'" in message and "fix:" in message
    assert {f["check"] for f in exc.report.model_dump()["expectations"] if not f["success"]} == {"unique_ids",
                                                                                                "answer_well_formed"}
    assert "# Data contract FAILED" in exc.markdown
    table = contract_table(exc.report)
    assert [r["result"] for r in table[:2]] == ["FAILED", "FAILED"] and table[2]["result"] == "passed"
    # quarantined with its report; Data Docs in the home; the result logged to MLflow
    assert exc.quarantined.is_file() and Path(f"{exc.quarantined}.report.json").is_file()
    assert (fresh_home.data_docs / "index.html").is_file()
    logged = {a.path for a in MlflowClient().list_artifacts(exc.report.mlflow_run_id, "contract")}
    assert {"contract/report.md", "contract/report.json", "contract/gx_validation_results.json"} <= logged
    run = MlflowClient().get_run(exc.report.mlflow_run_id)
    assert run.data.tags["stage"] == "validate" and run.data.metrics["contract/failed_expectations"] == 2
    # picklable, as Prefect persists a failed task's exception
    again = pickle.loads(pickle.dumps(exc))
    assert str(again) == message and again.quarantined == exc.quarantined


def test_accepted_batch_is_moved_recorded_and_a_resent_copy_is_skipped(fresh_home, tokenizer_folder, tmp_path):
    import pandas as pd

    path = write_jsonl(good_items(), fresh_home.inbox / "first.jsonl")
    accepted = validate_batch(str(path), ContractConfig(), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home)
    assert accepted.skill == "add" and accepted.rows == ROWS and accepted.contract_version.startswith("1.0.0+")
    assert Path(accepted.path) == fresh_home.processed / "first.jsonl" and not path.exists()
    # the same rows, re-sent in another order and another format
    copy = fresh_home.inbox / "again.parquet"
    pd.DataFrame([it.__dict__ for it in reversed(good_items())]).to_parquet(copy)
    with pytest.raises(DuplicateBatch) as caught:
        validate_batch(str(copy), ContractConfig(), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home)
    assert caught.value.digest == accepted.digest and "already accepted" in str(caught.value)
    assert not copy.exists() and Path(caught.value.moved_to).is_file()
    # the cheap check a flow runs outside its task cache says the same
    resent = write_jsonl(good_items(), fresh_home.inbox / "resent.jsonl")
    with pytest.raises(DuplicateBatch):
        ensure_new_batch(resent, fresh_home)
    assert not resent.exists()
    assert ensure_new_batch(write_jsonl(good_items(seed=99), fresh_home.inbox / "new.jsonl"), fresh_home) is None
    # the command says so too, and still checks the file
    write_jsonl(good_items(), tmp_path / "third.jsonl")
    out = []
    assert validate_command(str(tmp_path / "third.jsonl"), home=fresh_home, tokenizer_folder=tokenizer_folder,
                            out=out.append) == 0
    assert "already accepted" in out[-1]


def test_move_false_leaves_the_file_until_mark_processed(fresh_home, tokenizer_folder):
    path = write_jsonl(good_items(seed=21), fresh_home.inbox / "flow.jsonl")
    accepted = validate_batch(str(path), ContractConfig(), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home, move=False)
    assert Path(accepted.path) == path and path.is_file()
    moved = mark_processed(path, accepted, fresh_home)
    assert Path(moved.path).parent == fresh_home.processed and not path.exists()
    assert mark_processed(path, accepted, fresh_home).path == moved.path  # idempotent (a retried flow)
    with pytest.raises(DuplicateBatch):
        validate_batch(str(write_jsonl(good_items(seed=21), fresh_home.inbox / "flow-again.jsonl")),
                       ContractConfig(), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home, move=False)


def test_distribution_shift_warns_or_fails(fresh_home, tokenizer_folder):
    mark = validate_batch(str(write_jsonl(two_digit_answers(), fresh_home.inbox / "ref.jsonl")), ContractConfig(), DEMO, SUITE_SIZE,
                          tokenizer_folder, fresh_home)
    assert mark.warnings == ()
    similar = [it for it in good_items(400, seed=31) if len(it.answer) == 2][:ROWS]
    assert validate_batch(str(write_jsonl(similar, fresh_home.inbox / "similar.jsonl")), ContractConfig(), DEMO, SUITE_SIZE,
                          tokenizer_folder, fresh_home).warnings == ()
    three_digit = [it for it in good_items(600, seed=32) if len(it.answer) == 3][:ROWS]
    shifted = write_jsonl(three_digit, fresh_home.inbox / "shifted.jsonl")
    with pytest.raises(ContractViolation) as caught:
        validate_batch(str(shifted), ContractConfig(fail_on_shift=True), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home)
    assert failed_checks(caught.value.report) == {"shift_answer_length"}
    assert "similar.jsonl" in str(caught.value)  # compared with the *last* accepted batch of the skill
    again = write_jsonl(three_digit, fresh_home.inbox / "shifted-again.jsonl")
    accepted = validate_batch(str(again), ContractConfig(), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home)
    assert len(accepted.warnings) == 1 and "shift_answer_length" in accepted.warnings[0]


def test_validate_command_exit_codes_and_no_side_effects(fresh_home, tokenizer_folder, tmp_path):
    good = write_jsonl(good_items(seed=41), tmp_path / "good.jsonl")
    bad = write_jsonl(replace(good_items(seed=41), 4, prompt=""), tmp_path / "bad.jsonl")
    unreadable = tmp_path / "bad.txt"
    unreadable.write_text("hello")
    out = []
    assert validate_command(str(good), home=fresh_home, tokenizer_folder=tokenizer_folder, out=out.append) == 0
    assert "PASSED" in out[-1]
    assert validate_command(str(bad), home=fresh_home, tokenizer_folder=tokenizer_folder, out=out.append) == 2
    assert "prompt_not_blank" in out[-1] and "FAILED" in out[-1]
    assert validate_command(str(unreadable), home=fresh_home, tokenizer_folder=tokenizer_folder, out=out.append) == 2
    assert "unsupported file type" in out[-1]
    assert good.is_file() and bad.is_file() and unreadable.is_file()
    assert not any(fresh_home.quarantine.iterdir()) and not any(fresh_home.processed.iterdir())
    # a home without a champion: checked with the demo tokenizer, and it says so
    out = []
    assert validate_command(str(good), home=fresh_home, out=out.append) == 0
    assert "no champion" in out[0]


def test_inbox_lists_batches_oldest_first(fresh_home):
    for name, mtime in (("b.jsonl", 200), ("a.jsonl", 200), ("c.parquet", 100), (".c.jsonl.tmp", 50),
                        ("notes.csv", 300)):
        path = fresh_home.inbox / name
        path.write_text("x")
        os.utime(path, (mtime, mtime))
    (fresh_home.inbox / "folder").mkdir()
    listed = BatchStore.at("", fresh_home).list_inbox()
    assert [Path(p).name for p in listed] == ["c.parquet", "a.jsonl", "b.jsonl", "notes.csv"]
    assert listed[0] == str(fresh_home.inbox / "c.parquet")


def test_a_batch_given_by_path_stays_where_it_was(fresh_home, tokenizer_folder, tmp_path):
    """Only inbox batches move on; a user's own file is copied into processed/ or quarantine/, and left alone."""
    mine = write_jsonl(good_items(seed=51), tmp_path / "mine" / "b.jsonl")
    original = mine.read_bytes()
    accepted = validate_batch(str(mine), ContractConfig(), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home)
    assert mine.read_bytes() == original
    assert Path(accepted.path) == fresh_home.processed / "b.jsonl" and Path(accepted.path).read_bytes() == original
    assert ledger.find(fresh_home, accepted.digest)["source"] == str(mine)
    # the same file again: skipped as already trained on, and still left where it is
    with pytest.raises(DuplicateBatch) as caught:
        ensure_new_batch(mine, fresh_home)
    assert caught.value.moved_to is None and "left in place" in str(caught.value) and mine.is_file()

    bad = write_jsonl(replace(good_items(seed=52), 4, prompt=""), tmp_path / "mine" / "bad.jsonl")
    with pytest.raises(ContractViolation) as caught:
        validate_batch(str(bad), ContractConfig(), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home)
    assert bad.is_file() and caught.value.quarantined == fresh_home.quarantine / "bad.jsonl"
    assert caught.value.quarantined.read_bytes() == bad.read_bytes()
    assert "prompt_not_blank" in Path(f"{caught.value.quarantined}.report.md").read_text()

    # the flow's path: validate without filing, then mark processed once the update used it
    later = write_jsonl(good_items(seed=53), tmp_path / "mine" / "later.jsonl")
    waiting = validate_batch(str(later), ContractConfig(), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home, move=False)
    done = mark_processed(later, waiting, fresh_home)
    assert later.is_file() and Path(done.path) == fresh_home.processed / "later.jsonl"
    assert mark_processed(later, waiting, fresh_home).path == done.path and later.is_file()  # idempotent


def test_the_ledger_is_in_mlflow_and_an_old_home_ledger_is_migrated_once(fresh_home, tokenizer_folder, tmp_path):
    """A second home on the same store sees what the first accepted; a home's old ledger file moves in once."""
    from continual_opd.home import Home

    path = write_jsonl(good_items(seed=61), fresh_home.inbox / "first.jsonl")
    accepted = validate_batch(str(path), ContractConfig(), DEMO, SUITE_SIZE, tokenizer_folder, fresh_home)
    other = Home(tmp_path / "other-machine").ensure()
    resent = write_jsonl(good_items(seed=61), other.inbox / "first.jsonl")
    with pytest.raises(DuplicateBatch) as caught:
        ensure_new_batch(resent, other)
    assert caught.value.entry["path"] == accepted.path and Path(caught.value.moved_to).parent.name == "duplicates"
    assert not (other.processed / "ledger.jsonl").exists()

    old = Home(tmp_path / "old-home").ensure()
    legacy = [{"digest": accepted.digest, "skill": "add", "rows": ROWS, "file": "dup.jsonl", "path": "x",
               "accepted_at": "2025-01-01T00:00:00+00:00"},
              {"digest": "f" * 64, "skill": "sub", "rows": 3, "file": "old.jsonl", "path": "/old/processed/old.jsonl",
               "accepted_at": "2025-01-02T00:00:00+00:00", "profile": {"prompt_shape": {"values": [], "weights": []}}}]
    (old.processed / "ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in legacy))
    entry = ledger.find(old, "f" * 64)
    assert entry["file"] == "old.jsonl" and entry["path"] == "/old/processed/old.jsonl"
    assert ledger.find(old, accepted.digest)["file"] == "first.jsonl"  # already there: kept, not added again
    assert not (old.processed / "ledger.jsonl").exists() and (old.processed / "ledger.jsonl.migrated").is_file()
    assert ledger.find(fresh_home, "f" * 64)["file"] == "old.jsonl"  # visible from any home of the store
    assert ledger.last_for_skill(old, "sub")["profile"] == legacy[1]["profile"]
    from continual_opd import registry

    client = registry.client()
    runs = client.search_runs([registry.experiment_id(ledger.LEDGER_EXPERIMENT)], "")
    assert sorted(r.data.tags["batch_file"] for r in runs) == ["first.jsonl", "old.jsonl"]


def test_contract_config_is_strict():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_prompt_tokenz"):
        ContractConfig(max_prompt_tokenz=3)
    with pytest.raises(ValidationError, match="min_prompt_tokens"):
        ContractConfig(min_prompt_tokens=9, max_prompt_tokens=3)
    with pytest.raises(ValidationError, match="suite_size"):  # one setting: evaluation.suite_size
        ContractConfig(suite_size=200)
