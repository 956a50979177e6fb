"""Bad input, everywhere a user can give it, gets a clear error (exit 1, the thing to fix named) and loses
nothing: no registry change, the batch still in the inbox, no new or half-written model folder.

Config-file mistakes and a missing registered model fail before any work; a teacher folder that is missing
or has torn safetensors fails in the flow; an unwritable home fails before Prefect starts; an empty inbox
is a no-op that says so. `tests/test_params.py` covers unknown keys and wrong types given with `--set`.
"""

import shutil
import subprocess
import sys

import pytest
import yaml

from tests.helpers import reliability as R

BAD_CONFIGS = {  # file content -> what the error must name
    "top-level-typo.yaml": ({"teachr": {"steps": 3}}, "teachr"),
    "wrong-type.yaml": ({"distill": {"steps": "lots"}}, "distill.steps"),
    "section-as-scalar.yaml": ({"evaluation": 5}, "evaluation"),
    "bad-literal.yaml": ({"distill": {"method": "magic"}}, "distill.method"),
    "negative.yaml": ({"teacher": {"gate_margin": -1}}, "teacher.gate_margin"),
    "not-a-mapping.yaml": (["teacher", "steps"], "mapping"),
}


@pytest.fixture()
def batch(home):
    """A good batch in the session home's inbox; removed afterwards so no later test finds it there."""
    from demo_world.skills import CATALOGUE
    from continual_opd.batch_io import write_jsonl

    path = write_jsonl(CATALOGUE["add"].items("train", 64, seed=4242), home.inbox / "bad-input-add.jsonl")
    yield path
    path.unlink(missing_ok=True)


def snapshot(home) -> dict:
    """Everything a failed update must leave as it was."""
    from continual_opd import registry

    client = registry.client()
    return {
        "versions": {m: sorted((str(v.version), tuple(sorted(v.tags.items())))
                               for v in client.search_model_versions(f"name='{m}'"))
                     for m in (registry.STUDENT_MODEL, registry.TEACHER_MODEL)},
        "aliases": registry.aliases(registry.STUDENT_MODEL),
        "models": sorted(p.name for p in home.models.iterdir()),
        "inbox": sorted(p.name for p in home.inbox.iterdir()),
        "processed": sorted(p.name for p in home.processed.rglob("*")),
    }


def run_cli(argv, capsys) -> tuple[int, str]:
    from cli.main import main

    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_a_bad_config_file_is_refused_before_any_work(name, home, batch, tmp_path, capsys):
    content, named = BAD_CONFIGS[name]
    config = tmp_path / name
    config.write_text(yaml.safe_dump(content))
    before = snapshot(home)
    code, err = run_cli(["run", "--batch", str(batch), "--config", str(config)], capsys)
    assert code == 1 and named in err, err
    assert snapshot(home) == before


@pytest.mark.parametrize("text, named", [
    ("teacher: {steps: [1,", "not valid YAML"),
    (None, "cannot be read"),
])
def test_an_unparsable_or_missing_config_file_is_named(text, named, home, batch, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    if text is not None:
        config.write_text(text)
    code, err = run_cli(["run", "--batch", str(batch), "--config", str(config)], capsys)
    assert code == 1 and named in err and str(config) in err, err


def test_exponent_notation_is_a_number_in_files_and_overrides(tmp_path):
    """YAML 1.1 reads `1e-4` as a string, which strict settings refused as 'Input should be a valid number'."""
    from flows.params import load_params

    config = tmp_path / "lr.yaml"
    config.write_text("teacher:\n  learning_rate: 3e-4\n")
    params = load_params("b.jsonl", config, ["distill.learning_rate=1E-3", "evaluation.seed=7"])
    assert params.teacher.learning_rate == 3e-4 and params.distill.learning_rate == 1e-3
    assert params.evaluation.seed == 7


def test_a_missing_gate_policy_file_is_refused_at_parse_time(home, batch, tmp_path, capsys):
    before = snapshot(home)
    code, err = run_cli(["run", "--batch", str(batch), "--set", f"gate.policy={tmp_path / 'nope.yaml'}"], capsys)
    assert code == 1 and "nope.yaml" in err and "cannot be read" in err, err
    assert snapshot(home) == before


@pytest.mark.slow
def test_a_model_name_the_registry_lacks_says_what_to_do(champion, home, batch, capsys):
    before = snapshot(home)
    code, err = run_cli(["run", "--batch", str(batch), "--set", "student_model=nope"], capsys)
    assert code == 1, err
    assert "'nope'" in err and "continual-opd bootstrap" in err, err
    assert snapshot(home) == before


@pytest.mark.slow
def test_a_missing_teacher_folder_is_named_and_nothing_is_lost(champion, home, batch, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    before = snapshot(home)
    code, err = run_cli(["run", "--batch", str(batch), "--set", f"teacher.init={missing}"], capsys)
    assert code == 1 and f"model folder {missing} does not exist" in err, err
    assert snapshot(home) == before


@pytest.mark.slow
def test_torn_safetensors_are_named_and_nothing_is_lost(champion, home, batch, base_folder, tmp_path, capsys):
    """A copy of the base whose weights file was cut short (a copy interrupted halfway) as the teacher's start."""
    torn = tmp_path / "torn-model"
    shutil.copytree(base_folder, torn)
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = snapshot(home)
    code, err = run_cli(["run", "--batch", str(batch), "--config", str(R.ROOT / "configs" / "smoke.yaml"),
                         "--set", f"teacher.init={torn}"], capsys)
    assert code == 1 and f"model folder {torn}" in err and "could not be loaded" in err, err
    assert snapshot(home) == before
    assert batch.is_file(), "a batch whose update failed stays in the inbox for the rerun"


def test_an_unwritable_home_is_named_by_the_cli(tmp_path):
    """The home lies below a plain file, so not even root can create it (CI runs as root: no chmod test)."""
    (tmp_path / "file").write_text("not a folder")
    home = tmp_path / "file" / "home"
    proc = subprocess.run([sys.executable, "-m", "cli", "run", "--batch", str(tmp_path / "b.jsonl")],
                          env=R.cli_env(home), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"home {home} is not writable" in proc.stderr and "CONTINUAL_OPD_HOME" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_an_empty_inbox_is_a_no_op_that_says_so(home, tmp_path, monkeypatch):
    import logging

    from continual_opd import registry
    from flows.nightly import nightly_updates

    empty = tmp_path / "empty-home"
    monkeypatch.setenv("CONTINUAL_OPD_HOME", str(empty))
    before = registry.aliases(registry.STUDENT_MODEL)
    said = []  # the flow-run logger, read directly: Prefect's console handler may be bound to another stream
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("prefect.flow_runs").addHandler(handler)
    try:
        state = nightly_updates(return_state=True)
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(handler)
    assert state.is_completed() and state.result() == []
    assert f"inbox {empty / 'inbox'} is empty: nothing to update" in said
    assert registry.aliases(registry.STUDENT_MODEL) == before
    assert not any(any((empty / d).iterdir()) for d in ("inbox", "processed", "quarantine", "models"))
