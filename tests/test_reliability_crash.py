"""SIGKILL an update in every stage, then rerun it: the update finishes and the registry never lies.

One batch, one home, one long story (a killed stage costs a whole process start, so the kills are chained):
kill in the teacher's folder write, rerun and kill mid-distillation, rerun and kill mid-evaluation, rerun
and kill between the gate's two alias moves, rerun and kill right after `champion` moved, rerun to the end.
After every kill: `champion` is a blessed version (or the bootstrap one), each piece of work is registered
at most once, no temporary folder is registered, the batch is still in the inbox, and no process tried
to reach the network. The kill points are reached deterministically by `tests/helpers/pause_cli.py`.
"""

import json
from pathlib import Path

import pytest

from tests.helpers import reliability as R

pytestmark = [pytest.mark.slow, pytest.mark.long]  # about 3 minutes: make test-long


def _state(home: Path) -> dict:
    return {"aliases": R.aliases(home), "students": [v["version"] for v in R.versions(home)],
            "teachers": [v["version"] for v in R.versions(home, R.TEACHER)]}


def _temp_folders(home: Path, prefix: str) -> list[Path]:
    return sorted((home / "models").glob(f".{prefix}-*.tmp-*"))


def test_an_update_killed_in_every_stage_finishes_on_rerun_and_the_registry_stays_true():
    home = R.shared_home()
    batch = R.write_batch(home, "crash-add.jsonl", seed=101)
    argv = ["run", "--batch", str(batch), *R.tiny_args()]
    start = _state(home)
    champion = start["aliases"]["champion"]

    def after_kill(point: str) -> dict:
        R.assert_registry_invariants(home)
        assert batch.is_file(), f"killed at {point}: the batch left the inbox before its update finished"
        assert R.network_attempts(home) == [], R.network_attempts(home)
        return _state(home)

    # 1. Teacher: its final folder is written to a temporary sibling, the rename has not happened.
    R.run_and_kill_at(home, argv, "teacher-save")
    state = after_kill("teacher-save")
    assert _temp_folders(home, "teacher"), "the kill should leave the teacher's temporary folder behind"
    assert state == start, "nothing is registered before the teacher's folder is complete"

    # 2. Distillation, mid-training: the teacher from the rerun is registered once; no candidate yet.
    R.run_and_kill_at(home, argv, "distill-step")
    state = after_kill("distill-step")
    assert len(state["teachers"]) == len(start["teachers"]) + 1 and state["students"] == start["students"]
    assert list((home / "checkpoints").glob("distill-*/trainer/checkpoint-*/trainer_state.json")), \
        "distillation should have left a resumable checkpoint"

    # 3. Evaluation: the candidate exists (registered once, with its lineage); the champion has not moved.
    R.run_and_kill_at(home, argv, "evaluate")
    state = after_kill("evaluate")
    assert len(state["teachers"]) == len(start["teachers"]) + 1, "the rerun reused the registered teacher"
    (candidate,) = [v for v in R.versions(home) if v["version"] not in start["students"]]
    assert state["aliases"]["champion"] == champion and state["aliases"]["candidate"] == candidate["version"]
    report = json.loads(Path(candidate["tags"]["model_folder"], "distill_report.json").read_text())
    assert report["metrics"]["resumed_from_step"] > 0, "the rerun resumed distillation from its checkpoint"

    # 4. The gate, between `previous-champion` and `champion`: nothing is decided yet.
    R.run_and_kill_at(home, argv, "gate-between", timeout=300)
    state = after_kill("gate-between")
    assert state["aliases"]["champion"] == champion and state["students"] == start["students"] + [
        candidate["version"]]

    (audit,) = [r for r in R.gate_runs(home) if r["tags"].get("candidate_version") == candidate["version"]]
    assert audit["status"] == "RUNNING" and audit["tags"]["gate_decision"] == "promoted", \
        "the decision is recorded before any alias moves"

    # 5. The gate, right after `champion` moved (here: the rerun completing the recorded decision).
    R.run_and_kill_at(home, argv, "gate-after", timeout=300)
    state = after_kill("gate-after")
    assert state["aliases"]["champion"] == candidate["version"]

    # 6. The rerun finishes the update, with one decision that every record agrees on.
    final = R.run(home, argv, "crash-final-rerun", timeout=900)
    assert final.popen.returncode == 0, final.stderr[-4000:]
    assert "PROMOTED" in final.stdout
    R.assert_registry_invariants(home)
    state = _state(home)
    assert state["students"] == start["students"] + [candidate["version"]], "one update, one candidate version"
    assert state["aliases"]["champion"] == candidate["version"]
    assert state["aliases"]["previous-champion"] == champion
    tags = {v["version"]: v["tags"] for v in R.versions(home)}[candidate["version"]]
    assert tags["gate_decision"] == "promoted"
    decisions = [r for r in R.gate_runs(home) if r["tags"].get("candidate_version") == candidate["version"]]
    finished = [r for r in decisions if r["status"] == "FINISHED"]
    assert len(finished) == 1 and finished[0]["tags"]["gate_decision"] == "promoted", decisions
    assert finished[0]["run_id"] == tags["gate_run_id"], "the version points at the decision that counts"
    assert all(r["status"] != "RUNNING" for r in decisions), "an interrupted decision is left open in the trail"
    assert not batch.exists() and (home / "processed" / batch.name).is_file()
    # Each killed attempt is closed in MLflow with the stage it died in; the rerun resumed against champion v1.
    runs = R.update_runs(home, batch)
    assert [(r["status"], r["tags"].get("failed_stage")) for r in runs] == [
        ("KILLED", "teacher_rl"), ("KILLED", "distill"), ("KILLED", "evaluate"), ("KILLED", "gate"),
        ("KILLED", "gate"), ("FINISHED", None)]
    assert {r["tags"]["champion_version"] for r in runs} == {champion}
    assert R.network_attempts(home) == []
