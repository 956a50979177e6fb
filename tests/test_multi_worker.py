"""Two workers, one truth: two homes, as two machines would have, share one PostgreSQL-backed MLflow server and one
Prefect server, and behave as one system.

Each step is a separate `continual-opd` process on its own home, given only the servers' URLs (tiny budgets and a
permissive policy: these check where decisions are read from, not learning):

1. an update through home A is promoted;
2. the same rows sent through home B are skipped as already trained on;
3. the next update through home B, of another skill, replays the skill A taught, and its gate applies the
   `{taught}` threshold to it; B trains from A's champion although A's model folders are gone (fetched from the
   artifact store);
4. two updates started at once on A and B run one after the other (one waits on the Prefect global
   concurrency limit and says so), each building on the other's result, with one finished audit run each.

A separate check shows that the update lock is a lease: when its holder is killed, a waiter on another home gets
it within the lease (plus the server's 15 s sweep), not never.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import reliability as R
from tools.postgres_stack import missing_reason, postgres_stack

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.long]  # 4-5 minutes: make test-long

UPDATE_LIMIT = "continual-opd-update"
POLICY = """\
policy_version: "test-taught-1"
name: multi-worker-permissive
description: Blesses every candidate that answers core prompts at all, and checks every skill taught before.
thresholds:
  - metric: "{core}/acc"
    why: "always passes: this test checks where decisions are read from, not learning"
    value: {lower_bound: 0.0}
  - metric: "{taught}/acc"
    why: "always passes; present so that the test sees it applied to the skills earlier updates taught"
    value: {lower_bound: 0.0}
"""

HOLD_LOCK = r"""
import sys, time
from pathlib import Path
from continual_opd.home import Home
from continual_opd.locking import exclusive

home = Home(Path(sys.argv[1])).ensure()
with exclusive(home, "update", limit=sys.argv[2], lease_s=float(sys.argv[3]),
               on_wait=lambda what: print("WAITING", what, flush=True)):
    print("HELD", time.time(), flush=True)
    time.sleep(float(sys.argv[4]))
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    reason = missing_reason()
    if reason:
        pytest.skip(f"no PostgreSQL here: {reason}")
    pytest.importorskip("psycopg2", reason="MLflow on PostgreSQL needs a driver: pip install -e '.[server]'")
    with postgres_stack(tmp_path_factory.mktemp("stack"), basic_auth=False) as running:
        yield running


def worker_env(stack) -> dict[str, str]:
    return dict(stack.client_env)


def client(stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow.url)


def versions(stack, model: str = R.STUDENT) -> dict[str, object]:
    return {str(v.version): v for v in client(stack).search_model_versions(f"name='{model}'")}


def aliases(stack, model: str = R.STUDENT) -> dict[str, str]:
    return {a: str(v) for a, v in client(stack).get_registered_model(model).aliases.items()}


def gate_checks(stack, run_id: str, tmp_path: Path) -> list[dict]:
    folder = tmp_path / f"checks-{run_id}"
    folder.mkdir()
    return json.loads(Path(client(stack).download_artifacts(run_id, "gate/checks.json", str(folder))).read_text())


def update(home: Path, batch: Path, log: str, stack, policy: Path) -> R.Proc:
    return R.start(home, ["run", "--batch", str(batch), *R.tiny_args(f"gate.policy={policy}")], log,
                   env=worker_env(stack))


def test_two_homes_on_shared_servers_behave_as_one_system(stack, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    home_a, home_b = tmp_path / "machine-a" / "home", tmp_path / "machine-b" / "home"
    for home in (home_a, home_b):
        home.parent.mkdir()
    boot = R.run(home_a, ["bootstrap"], "bootstrap", timeout=900, env=worker_env(stack))
    assert boot.popen.returncode == 0, boot.stderr[-4000:]
    base = aliases(stack)["champion"]

    # 1. an update through home A is promoted
    add = R.write_batch(home_a, "add.jsonl", seed=301)
    first = update(home_a, add, "a-add", stack, policy)
    assert first.wait(900) == 0, first.stderr[-4000:]
    champion_a = aliases(stack)["champion"]
    assert champion_a != base and versions(stack)[champion_a].tags["gate_decision"] == "promoted"
    assert not add.exists() and (home_a / "processed" / "add.jsonl").is_file()
    # machine B has none of A's files: A's model folders are out of reach from here on
    (home_a / "models").rename(home_a.parent / "models-out-of-reach")

    # 2. the same rows sent through home B are skipped as already trained on
    before = set(versions(stack))
    resent = R.write_batch(home_b, "add-resent.jsonl", seed=301)
    skip = update(home_b, resent, "b-resent", stack, policy)
    assert skip.wait(900) == 5, skip.stderr[-4000:]  # exit 5: skipped, already trained on
    assert "skipped:" in skip.stdout and "already accepted" in skip.stdout and "add.jsonl" in skip.stdout
    assert set(versions(stack)) == before and aliases(stack)["champion"] == champion_a
    assert (home_b / "processed" / "duplicates" / "add-resent.jsonl").is_file()

    # 3. the next update through B replays A's skill, its gate checks it, and it trains from A's champion
    sub = R.write_batch(home_b, "sub.jsonl", seed=302, skill="sub")
    second = update(home_b, sub, "b-sub", stack, policy)
    assert second.wait(900) == 0, second.stderr[-4000:]
    champion_b = aliases(stack)["champion"]
    candidate = versions(stack)[champion_b]
    assert candidate.tags["parent_version"] == champion_a, "B trained from A's champion"
    assert not (home_a / "models").exists(), "so B fetched it from the artifact store"
    distill_params = client(stack).get_run(candidate.run_id).data.params
    assert "add" in distill_params["replayed_skills"].split(","), distill_params["replayed_skills"]
    checks = {c["metric"]: c for c in gate_checks(stack, candidate.tags["gate_run_id"], tmp_path)}
    assert checks["add/acc"]["passed"] is True and "{taught}" not in json.dumps(checks)
    assert "sub/acc" not in checks, "the skill being taught is no {taught} skill of its own update"

    # 4. two updates started at once on A and B run one after the other
    audited = {r.info.run_id for r in gate_runs(stack)}
    racers = {"a": update(home_a, R.write_batch(home_a, "add-2.jsonl", seed=303), "a-race", stack, policy),
              "b": update(home_b, R.write_batch(home_b, "sub-2.jsonl", seed=304, skill="sub"), "b-race", stack,
                          policy)}
    codes = {name: proc.wait(1200) for name, proc in racers.items()}
    assert codes == {"a": 0, "b": 0}, {n: p.stderr[-3000:] for n, p in racers.items()}
    waited = [n for n, p in racers.items()
              if "another continual update is running; waiting" in p.stderr
              and f"Prefect global concurrency limit '{UPDATE_LIMIT}'" in p.stderr]
    assert len(waited) == 1, "exactly one of them waited, on the Prefect global concurrency limit"

    new = [v for k, v in versions(stack).items() if k not in before and k != champion_b]
    assert len(new) == 2, "one candidate per racing update"
    (early,) = [v for v in new if v.tags["parent_version"] == champion_b]
    (late,) = [v for v in new if v.tags["parent_version"] == str(early.version)]
    assert aliases(stack) == {"champion": str(late.version), "previous-champion": str(early.version),
                              "candidate": str(late.version)}

    decisions = [r for r in gate_runs(stack) if r.info.run_id not in audited]
    assert sorted(r.data.tags["candidate_version"] for r in decisions) == sorted(str(v.version) for v in new)
    for v in new:
        (d,) = [r for r in decisions if r.data.tags["candidate_version"] == str(v.version)]
        assert d.info.status == "FINISHED" and d.info.run_id == v.tags["gate_run_id"]
        assert d.data.tags["gate_decision"] == "promoted" == v.tags["gate_decision"]
    spans = sorted((r.info.start_time, r.info.end_time) for r in update_runs(stack))
    assert len(spans) == 4 and all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), spans

    # the accuracy matrix in the registry: every promotion of both homes, in order
    rows = [json.loads(v) for k, v in sorted(client(stack).get_registered_model(R.STUDENT).tags.items())
            if k.startswith("matrix.row.")]
    assert [(r["version"], r["event"]) for r in rows] == [
        (base, "baseline"), (champion_a, "promoted"), (champion_b, "promoted"), (str(early.version), "promoted"),
        (str(late.version), "promoted")]
    assert not (home_a / "accuracy_matrix.json").exists() and not (home_b / "accuracy_matrix.json").exists()
    assert not (home_a / "processed" / "ledger.jsonl").exists() and not (home_b / "processed" / "ledger.jsonl").exists()
    for home in (home_a, home_b):
        assert R.network_attempts(home) == []


def gate_runs(stack) -> list:
    experiment = client(stack).get_experiment_by_name("gate-decisions")
    return client(stack).search_runs([experiment.experiment_id], "")


def update_runs(stack) -> list:
    experiment = client(stack).get_experiment_by_name("continual-updates")
    return client(stack).search_runs([experiment.experiment_id], "tags.stage = 'update' and tags.outcome = 'promoted'")


def test_a_killed_holder_of_the_update_lock_frees_it_when_its_lease_ends(stack, tmp_path):
    lease_s, limit = 60.0, "continual-opd-update-lease-check"  # 60 s: the shortest lease Prefect's server grants

    def hold(name: str, seconds: float) -> subprocess.Popen:
        home = tmp_path / name / "home"
        home.parent.mkdir()
        env = R.cli_env(home, **worker_env(stack))
        return subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(home), limit, str(lease_s), str(seconds)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    holder = hold("machine-a", 3600)
    assert holder.stdout.readline().startswith("HELD"), holder.stderr.read()[-3000:]
    waiter = hold("machine-b", 0)
    line = waiter.stdout.readline()
    assert line.startswith("WAITING") and f"Prefect global concurrency limit {limit!r}" in line, line
    os.killpg(holder.pid, signal.SIGKILL)  # SIGKILL: no release, no goodbye; only the lease can end
    killed_at = time.time()
    holder.wait(timeout=30)

    held = waiter.stdout.readline()
    assert held.startswith("HELD"), waiter.stderr.read()[-3000:]
    waited = float(held.split()[1]) - killed_at
    # not at once (the dead holder's lease still ran), and not never: within the lease plus the 15 s sweep
    assert lease_s / 2 < waited < lease_s + 15 + 30, f"the slot came free {waited:.0f} s after its holder died"
    assert waiter.wait(timeout=60) == 0
