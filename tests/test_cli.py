"""The command line speaks one language: every command shows an example in its --help, `adopt` is a command,
`validate` reads the same settings as `run` (a YAML-declared skill is known to it), a skipped batch has its own
exit code, and the output is quiet unless --verbose asks for the libraries' logs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli.main import COMMANDS, main
from cli.outcome import EXIT_PROMOTED, EXIT_SKIPPED, print_outcome
from continual_opd.records import SkippedBatch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_shows_an_example_in_its_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    example = text.split("example:", 1)[1]
    assert f"continual-opd {command}" in example, text
    assert "--verbose" in text


def test_adopt_is_a_command_of_its_own(capsys):
    with pytest.raises(SystemExit):
        main(["adopt", "--help"])
    assert "--name" in capsys.readouterr().out
    assert main(["adopt", "/no/such/folder", "--name", "x"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_skipped_batch_has_its_own_exit_code(capsys):
    skipped = SkippedBatch(path="b.jsonl", digest="abc", reason="the same rows were already accepted")
    assert print_outcome(None, None, skipped) == EXIT_SKIPPED != EXIT_PROMOTED
    assert "skipped: the same rows were already accepted" in capsys.readouterr().out
    assert "5 skipped" in (ROOT / "docs" / "design.md").read_text()


def _yaml_skill(tmp_path: Path) -> Path:
    """A config whose skills are a YAML file: the demo's core skills and `dbl`, a target declared from rows."""
    rows = [{"prompt": f"dbl:{n}=", "answer": str(2 * n)} for n in range(10, 1000)]
    (tmp_path / "dbl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    skills = [{"id": "dbl", "role": "target", "data": {"file": "dbl.jsonl", "heldout_fraction": 0.5}}]
    skills += [{"id": s, "generator": f"demo_world:{s}"} for s in ("copy", "reverse", "upper", "refuse")]
    (tmp_path / "skills.yaml").write_text(yaml.safe_dump({"skills": skills}))
    config = tmp_path / "update.yaml"
    config.write_text(yaml.safe_dump({"skills": [str(tmp_path / "skills.yaml")], "evaluation": {"suite_size": 100}}))
    return config


def test_validate_reads_the_update_settings_so_a_yaml_skill_is_known(tmp_path, capsys):
    from continual_opd import skill_files

    config = _yaml_skill(tmp_path)
    dbl = skill_files.load_skill_file(tmp_path / "skills.yaml")["dbl"]
    batch = tmp_path / "dbl-batch.jsonl"
    batch.write_text("".join(json.dumps({"id": it.id, "skill": "dbl", "prompt": it.prompt, "answer": it.answer}) + "\n"
                             for it in dbl.items("train", 200, seed=0)))

    assert main(["validate", str(batch), "--config", str(config)]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert main(["validate", str(batch), "--config", str(config), "--set", "contract.min_rows=500"]) == 2
    assert "FAILED" in capsys.readouterr().out, "--set applies too"
    assert main(["validate", str(batch)]) == 2, "without the settings, dbl is not one of the demo's skills"
    assert "dbl" in capsys.readouterr().out
    assert batch.is_file(), "validate moves nothing"


def _cli(args, home: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "HF_", "TRANSFORMERS_"))}
    env.update(CONTINUAL_OPD_HOME=str(home), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_library_output_is_quiet_by_default_and_shown_with_verbose(base_folder, tmp_path):
    """Bootstrapping a home loads the base once (MLflow checks the logged model): a transformers bar and an
    MLflow info line are there to be hidden or shown."""
    quiet = _cli(["bootstrap"], tmp_path / "quiet", tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "Loading weights" not in quiet.stderr + quiet.stdout
    assert "INFO mlflow" not in quiet.stderr, quiet.stderr
    assert "registered continual-opd-student v1 as champion" in quiet.stdout
    verbose = _cli(["bootstrap", "--verbose"], tmp_path / "verbose", tmp_path)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "Loading weights" in verbose.stderr and "INFO mlflow" in verbose.stderr, verbose.stderr[-3000:]


THIRD_PARTY_NOISE = {
    "a progress bar": r"\d+%\||it/s\]|s/it\]",
    "a Python warning": r"\w+Warning: |warnings\.warn\(",
    "transformers' loading or saving bar": r"Loading weights|Writing model shards",
    "an MLflow info line": r"\bINFO mlflow\.",
    "a carriage return (a redrawn bar)": r"\r",
}


@pytest.mark.slow
def test_the_demo_prints_progress_lines_and_no_library_noise(base_folder, tmp_path):
    """`continual-opd demo` at smoke budgets, cut further (what is checked is the output, not the learning), its
    output captured as a CI log or a worker's log would be. The teacher keeps 20 of its steps: with 6, its best
    checkpoint on the selection set could score half a point below the base on the gate set (a base at 35.5% on
    add), and the teacher gate, at margin 0, stopped the run before distillation printed anything."""
    import re

    shorter = ["teacher.steps=20", "teacher.eval_every=10", "distill.steps=4", "distill.eval_every=2"]
    demo = _cli(["demo", "--rows", "512", "--config", str(ROOT / "configs" / "smoke.yaml"),
                 *[a for o in shorter for a in ("--set", o)]], tmp_path / "home", tmp_path)
    text = demo.stdout + demo.stderr
    assert demo.returncode in (0, 3), text[-4000:]
    for what, pattern in THIRD_PARTY_NOISE.items():
        found = [line for line in text.splitlines(keepends=True) if re.search(pattern, line)]
        assert not found, f"{what} in the demo's output: {found[:3]}"
    for stage in ("teacher-rl", "distill", "evaluate"):
        lines = [line for line in demo.stdout.splitlines() if line.startswith(f"{stage}: ")]
        assert lines and re.search(r": \d+/\d+ \(\d+%\) \[\d\d:\d\d<", lines[-1]), (stage, demo.stdout[-3000:])
    assert "decision: " in demo.stdout
