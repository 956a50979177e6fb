"""The accuracy matrix is registry state: any home of a store reads the same rows, cells and roles, and a home's
old `accuracy_matrix.json` is copied into the registry once (what the registry has already is kept)."""

import json
import logging

import pytest

from continual_opd import accuracy_matrix, registry
from continual_opd.home import Home


def register(name: str, versions: int) -> None:
    client = registry.client()
    client.create_registered_model(name)
    for _ in range(versions):
        client.create_model_version(name, "file:///nowhere")


def test_rows_cells_and_roles_live_in_the_registry_for_every_home(fresh_world, tmp_path):
    register("m", 2)
    accuracy_matrix.record_accuracy(fresh_world, "m", "1", {"add": 0.4, "copy": 1.0}, {"add": "target", "copy": "core"})
    accuracy_matrix.record_accuracy(fresh_world, "m", "1", {"add": 0.9}, {})  # first measurement wins
    accuracy_matrix.append_row(fresh_world, "m", "1", "baseline")
    accuracy_matrix.append_row(fresh_world, "m", "2", "promoted", "add", run_id="r2")

    elsewhere = Home(tmp_path / "another-machine").ensure()
    matrix = accuracy_matrix.load(elsewhere, "m")
    assert matrix["accuracy"] == {"1": {"add": 0.4, "copy": 1.0}}
    assert [(r["version"], r["event"], r["target_skill"], r["run_id"]) for r in matrix["rows"]] == [
        ("1", "baseline", "", ""), ("2", "promoted", "add", "r2")]
    assert matrix["roles"] == {"add": "target", "copy": "core"}
    assert accuracy_matrix.taught_skills(elsewhere, "m") == ["add"]
    assert registry.get_version("m", "1").tags["matrix.acc.add"] == "0.4"

    before = accuracy_matrix.snapshot(elsewhere, "m")
    accuracy_matrix.append_row(fresh_world, "m", "1", "rollback")
    accuracy_matrix.restore(fresh_world, "m", before)  # how an undone gate decision puts the rows back
    assert [r["event"] for r in accuracy_matrix.load(fresh_world, "m")["rows"]] == ["baseline", "promoted"]
    assert accuracy_matrix.load(fresh_world, "no-such-model") == {"accuracy": {}, "rows": [], "roles": {}}


def test_an_old_home_matrix_file_is_migrated_once(fresh_world, caplog):
    register("m", 3)
    register("kept", 1)
    accuracy_matrix.append_row(fresh_world, "kept", "1", "baseline")  # this model already has rows in the registry
    rows = [{"version": "1", "event": "baseline", "target_skill": "", "run_id": "", "at": "2025-01-01T00:00:00Z"},
            {"version": "2", "event": "promoted", "target_skill": "add", "run_id": "g", "at": "2025-01-02T00:00:00Z"}]
    legacy = {"models": {
        "m": {"rows": rows, "accuracy": {"1": {"add": 0.3}, "2": {"add": 0.8}, "9": {"add": 0.1}},
              "roles": {"add": "target"}},
        "kept": {"rows": [{**rows[0], "event": "old"}], "accuracy": {}},
        "ghost": {"rows": rows, "accuracy": {}}}}
    path = fresh_world.root / "accuracy_matrix.json"
    path.write_text(json.dumps(legacy))

    with caplog.at_level(logging.WARNING, logger="continual_opd.accuracy_matrix"):
        assert accuracy_matrix.taught_skills(fresh_world, "m") == ["add"]
    assert not path.exists() and path.with_name("accuracy_matrix.json.migrated").is_file()
    message = caplog.text
    assert "moved the accuracy matrix" in message and "ghost: skipped, no such registered model" in message
    matrix = accuracy_matrix.load(fresh_world, "m")
    assert matrix["rows"] == rows and matrix["accuracy"] == {"1": {"add": 0.3}, "2": {"add": 0.8}}  # v9 unknown
    assert [r["event"] for r in accuracy_matrix.load(fresh_world, "kept")["rows"]] == ["baseline"]

    caplog.clear()
    assert accuracy_matrix.load(fresh_world, "m") == matrix  # once: nothing left to migrate, nothing logged
    assert "moved the accuracy matrix" not in caplog.text


def test_a_corrupt_old_matrix_file_says_what_to_do(fresh_world):
    (fresh_world.root / "accuracy_matrix.json").write_text("{not json")
    with pytest.raises(ValueError, match="accuracy matrix .* is corrupt.*gate-decisions, or remove it"):
        accuracy_matrix.taught_skills(fresh_world, "m")
