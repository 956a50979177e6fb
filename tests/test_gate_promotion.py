"""Promotion, rejection, on_rollback, concurrency, rollback and the audit trail, on synthetic reports.

Each test registers its own model name (the base folder registered several times under different keys),
so the tests share the session's home without seeing each other's aliases, tags or accuracy matrix.
"""

import json
import math
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from continual_opd import registry
from continual_opd.home import Home
from continual_opd.records import Candidate, EvalReport, ModelRef, SuiteStats
from continual_opd import accuracy_matrix
from demo_world.skills import CATALOGUE
from gates.audit import GATE_EXPERIMENT
from gates.locking import gate_lock
from gates.policy import load_policy
from gates.promotion import GateConfig, RollbackRefused, decide, rollback
from gates.views import history_text, status_text
from tests.helpers.audit import audit_record

CORE = ("copy", "reverse", "upper", "refuse")
CFG = GateConfig()


def register(name: str, folder, key: str, tags: dict | None = None) -> str:
    client = registry.client()
    run = client.create_run(registry.experiment_id("gate-tests"))
    version = registry.register_folder(folder, name, run.info.run_id, tags or {}, key)
    client.set_terminated(run.info.run_id)
    return str(version.version)


@pytest.fixture()
def model(home, base_folder):
    """A fresh registered model with v1 @champion (blessed by bootstrap)."""
    name = f"gate-test-{uuid.uuid4().hex[:8]}"
    v1 = register(name, base_folder, "v1", {"gate_decision": "bootstrap", "method": "pretrain"})
    registry.client().set_registered_model_alias(name, registry.CHAMPION, v1)
    return name


def stats(name, champ, cand, low, high, p=0.5, n=1000):
    return SuiteStats(suite=name, n=n, champion_acc=champ, candidate_acc=cand, delta=cand - champ,
                      delta_ci_low=low, delta_ci_high=high, mcnemar_p=p, champion_lenient_acc=champ,
                      candidate_lenient_acc=cand)


def make_report(champion: str, candidate: str, kl: float = 0.02, **override: SuiteStats) -> EvalReport:
    suites = {"add": stats("add", 0.35, 0.90, 0.52, 0.58, 1e-30)}
    suites |= {c: stats(c, 1.0, 0.998, -0.006, 0.0) for c in CORE}
    suites |= override
    return EvalReport(champion_version=champion, candidate_version=candidate, suites=suites, kl_core=kl,
                      items_path="", run_id="", target_skill="add")


def make_candidate(name, version, folder, parent="1") -> Candidate:
    return Candidate(model=ModelRef(name=name, version=version, folder=str(folder)), method="opd",
                     parent_version=parent, teacher_version="7")


def champion_ref(name, version, folder) -> ModelRef:
    return ModelRef(name=name, version=version, folder=str(folder))


def aliases(name):
    return {k: str(v) for k, v in registry.aliases(name).items()}


def tags(name, version):
    return registry.get_version(name, version).tags


def test_a_good_candidate_is_promoted_with_an_audit_run(model, home, base_folder):
    v2 = register(model, base_folder, "v2", {"method": "opd"})
    champion = champion_ref(model, "1", base_folder)
    decision = decide(make_report("1", v2), make_candidate(model, v2, base_folder), champion, CFG, CATALOGUE, home)
    assert decision.promoted and decision.candidate_version == v2 and decision.champion_version == "1"
    assert aliases(model) == {"champion": v2, "previous-champion": "1"}
    t = tags(model, v2)
    assert t["gate_decision"] == "promoted" and t["gate_run_id"] == decision.audit_run_id
    assert t["gate_policy_version"] == decision.policy_version == load_policy().version

    audit = audit_record(decision.audit_run_id)
    assert audit["status"] == "FINISHED"
    assert audit["tags"]["gate_decision"] == "promoted" and audit["tags"]["event"] == "gate"
    assert audit["tags"]["candidate_version"] == v2 and audit["tags"]["previous_champion_version"] == "1"
    assert audit["params"]["policy_sha256"]
    assert audit["metrics"]["add/delta_ci_low"] == pytest.approx(0.52)
    assert audit["metrics"]["drift/kl_core"] == pytest.approx(0.02)
    assert audit["decision"]["promoted"] is True
    client = registry.client()
    files = {f.path for f in client.list_artifacts(decision.audit_run_id, "gate")}
    assert {"gate/policy.yaml", "gate/checks.json", "gate/report.md", "gate/report.html", "gate/chart.png",
            "gate/accuracy_matrix.json", "gate/decision.json"} <= files
    assert client.get_experiment(client.get_run(decision.audit_run_id).info.experiment_id).name == GATE_EXPERIMENT

    rows = accuracy_matrix.load(home, model)["rows"]
    assert [(r["version"], r["event"], r["target_skill"]) for r in rows] == [("1", "baseline", ""),
                                                                             (v2, "promoted", "add")]


def test_a_forgetting_candidate_is_rejected_and_the_reasons_name_the_suite(model, home, base_folder):
    v2 = register(model, base_folder, "v2", {"method": "sft_teacher_samples"})
    report = make_report("1", v2, kl=0.15, reverse=stats("reverse", 0.998, 0.83, -0.193, -0.145, 1e-40))
    decision = decide(report, make_candidate(model, v2, base_folder), champion_ref(model, "1", base_folder), CFG, CATALOGUE, home)
    assert not decision.promoted
    assert aliases(model) == {"champion": "1"}
    reasons = " | ".join(decision.reasons)
    assert "suite reverse regressed" in reasons and "99.8% -> 83.0%" in reasons and "drift/kl_core" in reasons
    t = tags(model, v2)
    assert t["gate_decision"] == "rejected" and "suite reverse regressed" in t["gate_reasons"]
    assert audit_record(decision.audit_run_id)["tags"]["gate_decision"] == "rejected"
    rows = accuracy_matrix.load(home, model)["rows"]
    assert [r["version"] for r in rows] == ["1"]  # the champion stays; no row for a rejected candidate


def test_deciding_a_candidate_twice_returns_the_recorded_decision(model, home, base_folder):
    v2 = register(model, base_folder, "v2")
    args = (make_report("1", v2), make_candidate(model, v2, base_folder), champion_ref(model, "1", base_folder), CFG,
            CATALOGUE, home)
    first = decide(*args)
    again = decide(*args)  # a Prefect retry after a crash must not re-decide against the new champion
    assert again == first and aliases(model)["champion"] == v2


def test_a_candidate_is_rejected_when_the_champion_moved_during_the_update(model, home, base_folder):
    v2, v3 = register(model, base_folder, "v2"), register(model, base_folder, "v3")
    registry.client().set_registered_model_alias(model, registry.CHAMPION, v3)  # someone else promoted v3
    decision = decide(make_report("1", v2), make_candidate(model, v2, base_folder),
                      champion_ref(model, "1", base_folder), CFG, CATALOGUE, home)
    assert not decision.promoted
    assert decision.reasons == (f"champion moved from v1 to v{v3} during the update; rerun against the new champion",)
    assert aliases(model)["champion"] == v3


def test_a_failure_after_the_alias_move_rolls_everything_back(model, home, base_folder, monkeypatch):
    import gates.audit as audit

    v2 = register(model, base_folder, "v2")
    matrix_before = accuracy_matrix.snapshot(home, model)

    real_move = audit._move_aliases

    def broken_move(*args, **kwargs):  # the alias move is the decision's last write: fail right after it
        real_move(*args, **kwargs)
        assert aliases(model)["champion"] == v2  # the move had happened when the failure struck
        raise OSError("disk full while writing the report")

    monkeypatch.setattr(audit, "_move_aliases", broken_move)
    args = (make_report("1", v2), make_candidate(model, v2, base_folder), champion_ref(model, "1", base_folder), CFG,
            CATALOGUE, home)
    with pytest.raises(OSError, match="disk full"):
        decide(*args)
    assert aliases(model) == {"champion": "1"}
    assert "gate_decision" not in tags(model, v2) and "gate_run_id" not in tags(model, v2)
    assert accuracy_matrix.snapshot(home, model) == matrix_before
    runs = registry.client().search_runs([registry.experiment_id(GATE_EXPERIMENT)],
                                         f"tags.model_name = '{model}'")
    (failed,) = runs
    assert failed.info.status == "FAILED" and failed.data.tags["gate_decision"] == "error"
    assert "disk full" in failed.data.tags["error"]

    monkeypatch.undo()
    assert decide(*args).promoted  # nothing half-done was left behind: deciding again works
    assert aliases(model) == {"champion": v2, "previous-champion": "1"}


def test_two_concurrent_gate_runs_are_serialised_and_only_one_wins(model, home, base_folder):
    v2, v3 = register(model, base_folder, "v2"), register(model, base_folder, "v3")
    champion = champion_ref(model, "1", base_folder)
    barrier = threading.Barrier(2)
    results, errors = {}, []

    def gate(version):
        try:
            barrier.wait()
            results[version] = decide(make_report("1", version), make_candidate(model, version, base_folder),
                                      champion, CFG, CATALOGUE, home)
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=gate, args=(v,)) for v in (v2, v3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    promoted = [v for v, d in results.items() if d.promoted]
    assert len(promoted) == 1, results
    (winner,) = promoted
    loser = v3 if winner == v2 else v2
    assert results[loser].reasons == (f"champion moved from v1 to v{winner} during the update; rerun against the "
                                      "new champion",)
    assert aliases(model) == {"champion": winner, "previous-champion": "1"}
    assert tags(model, winner)["gate_decision"] == "promoted" and tags(model, loser)["gate_decision"] == "rejected"


def test_the_prefect_concurrency_limit_serialises_even_across_homes(tmp_path, monkeypatch):
    """Two different homes (so two different file locks): only the Prefect global limit can serialise them."""
    from continual_opd import locking

    monkeypatch.setattr(locking, "prefect_server_configured", lambda: True)  # this process's API plays the server
    spans = []

    def hold(home):
        with gate_lock(home, CFG.concurrency_limit, CFG.lock_timeout_s):
            start = time.monotonic()
            time.sleep(0.4)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=hold, args=(Home(tmp_path / n),)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    (a0, a1), (b0, b1) = sorted(spans)
    assert b0 >= a1  # no overlap


def test_the_home_file_lock_serialises_processes(home, tmp_path):
    """Processes with separate ephemeral Prefect APIs share only the home: its flock must serialise them."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from continual_opd.home import Home
        from gates.locking import gate_lock
        with gate_lock(Home(Path({str(home.root)!r}))):
            start = time.time(); time.sleep(0.6); print(start, time.time())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    spans = sorted(tuple(map(float, p.communicate(timeout=120)[0].split())) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert spans[1][0] >= spans[0][1]


def test_rollback_restores_the_previous_champion_and_is_recorded(model, home, base_folder):
    v2 = register(model, base_folder, "v2")
    assert decide(make_report("1", v2), make_candidate(model, v2, base_folder), champion_ref(model, "1", base_folder),
                  CFG, CATALOGUE, home).promoted
    record = rollback("1", "users report worse reversals", model_name=model, home=home)
    assert aliases(model) == {"champion": "1", "previous-champion": v2}
    assert record.promoted and record.candidate_version == "1" and record.champion_version == v2
    assert "users report worse reversals" in record.reasons[0]
    audit = audit_record(record.audit_run_id)
    assert audit["tags"]["event"] == "rollback" and audit["tags"]["gate_decision"] == "rollback"
    assert audit["tags"]["rollback_reason"] == "users report worse reversals" and audit["tags"]["forced"] == "false"
    assert tags(model, v2)["rolled_back"] == "true"
    rows = accuracy_matrix.load(home, model)["rows"]
    assert [(r["version"], r["event"]) for r in rows] == [("1", "baseline"), (v2, "promoted"), ("1", "rollback")]

    history = history_text(model, home=home)
    assert history.index("promoted") < history.index("rollback")
    assert "users report worse reversals" in history and "ACC" in history and "BWT" in history
    status = status_text(model)
    assert "champion           v1" in status and f"previous-champion  v{v2}" in status


def test_rollback_refuses_unknown_current_unblessed_and_reasonless_targets(model, home, base_folder):
    v2 = register(model, base_folder, "v2")
    decide(make_report("1", v2, reverse=stats("reverse", 1.0, 0.8, -0.23, -0.17)),
           make_candidate(model, v2, base_folder), champion_ref(model, "1", base_folder), CFG, CATALOGUE, home)
    assert tags(model, v2)["gate_decision"] == "rejected"
    with pytest.raises(RollbackRefused, match="has no version 99"):
        rollback("99", "typo", model_name=model, home=home)
    with pytest.raises(RollbackRefused, match="already the champion"):
        rollback("1", "noop", model_name=model, home=home)
    with pytest.raises(RollbackRefused, match="needs a reason"):
        rollback(v2, "  ", model_name=model, home=home)
    with pytest.raises(RollbackRefused, match="never blessed .*--force"):
        rollback(v2, "try it", model_name=model, home=home)
    assert aliases(model) == {"champion": "1"}
    forced = rollback(v2, "operator override", force=True, model_name=model, home=home)
    assert aliases(model) == {"champion": v2, "previous-champion": "1"}
    assert audit_record(forced.audit_run_id)["tags"]["forced"] == "true" and "forced" in forced.reasons[0]


def test_the_first_candidate_without_a_champion_follows_value_thresholds_only(home, base_folder):
    name = f"gate-test-{uuid.uuid4().hex[:8]}"
    v1, v2 = register(name, base_folder, "v1"), register(name, base_folder, "v2")
    nan = math.nan

    def first_report(version, core_acc):
        suites = {s: SuiteStats(suite=s, n=1000, champion_acc=nan, candidate_acc=acc, delta=nan, delta_ci_low=nan,
                                delta_ci_high=nan, mcnemar_p=nan, champion_lenient_acc=nan, candidate_lenient_acc=acc)
                  for s, acc in {"add": 0.3, **{c: core_acc for c in CORE}}.items()}
        return EvalReport(champion_version="", candidate_version=version, suites=suites, kl_core=nan, items_path="",
                          target_skill="add")

    rejected = decide(first_report(v1, 0.6), make_candidate(name, v1, base_folder, parent=""), None, CFG, CATALOGUE, home)
    assert not rejected.promoted and aliases(name) == {}
    assert any("copy/candidate_acc = 0.6 violates >= 0.9" in r for r in rejected.reasons)
    promoted = decide(first_report(v2, 0.99), make_candidate(name, v2, base_folder, parent=""), None, CFG, CATALOGUE, home)
    assert promoted.promoted and aliases(name) == {"champion": v2}
    import mlflow

    checks = json.loads(mlflow.artifacts.load_text(f"runs:/{promoted.audit_run_id}/gate/checks.json"))
    assert {c["metric"] for c in checks if c["passed"] is None} >= {"add/acc", "drift/kl_core"}  # skipped


def test_inconsistent_inputs_are_refused(model, home, base_folder):
    v2 = register(model, base_folder, "v2")
    candidate = make_candidate(model, v2, base_folder)
    with pytest.raises(ValueError, match="compares against v1 but the champion passed is v5"):
        decide(make_report("1", v2), candidate, champion_ref(model, "5", base_folder), CFG, CATALOGUE, home)
    with pytest.raises(ValueError, match="not the candidate"):
        decide(make_report("1", "42"), candidate, champion_ref(model, "1", base_folder), CFG, CATALOGUE, home)
    assert aliases(model) == {"champion": "1"} and "gate_decision" not in tags(model, v2)


@pytest.mark.slow
def test_inside_a_flow_task_the_transaction_rolls_back_and_the_report_becomes_a_prefect_artifact(
        model, home, base_folder, monkeypatch):
    """The realistic setting: decide() in a Prefect task, whose own transaction encloses the gate's."""
    from prefect import flow, task
    from prefect.artifacts import Artifact

    import gates.audit as audit

    v2 = register(model, base_folder, "v2")
    champion = champion_ref(model, "1", base_folder)

    @task(retries=0)
    def gate_task(version):
        return decide(make_report("1", version), make_candidate(model, version, base_folder), champion, CFG, CATALOGUE, home)

    @flow
    def gate_flow(version: str):
        return gate_task(version)

    def broken(*args, **kwargs):
        raise OSError("artifact store unreachable")

    monkeypatch.setattr(audit, "_write_report", broken)
    state = gate_flow(v2, return_state=True)
    assert state.is_failed()
    assert aliases(model) == {"champion": "1"} and "gate_decision" not in tags(model, v2)

    monkeypatch.undo()
    decision = gate_flow(v2)
    assert decision.promoted and aliases(model) == {"champion": v2, "previous-champion": "1"}
    artifact = Artifact.get("gate-report")
    assert artifact is not None and "Gate decision: PROMOTED" in artifact.data and f"v{v2}" in artifact.data
