"""Three updates started at once on the embedded default (SQLite MLflow, ephemeral Prefect, one home).

Each is a separate `continual-opd run` process with its own batch. The home's update lock queues them, the
gate lock serialises their decisions, and each reads the champion inside the lock, so every update builds
on the one before: the lineage is a chain, not three siblings of which the last writer wins. Every
decision is in the audit trail, the final champion is blessed, and no SQLite "database is locked" error
reaches the user.
"""

import pytest

from tests.helpers import reliability as R

pytestmark = [pytest.mark.slow, pytest.mark.long]  # 2-3 minutes: make test-long


def test_three_concurrent_updates_queue_chain_and_are_all_audited():
    home = R.shared_home()
    before = {v["version"] for v in R.versions(home)}
    audited_before = {r["run_id"] for r in R.gate_runs(home)}
    champion = R.aliases(home)["champion"]
    batches = [R.write_batch(home, f"concurrent-{i}.jsonl", seed=200 + i) for i in range(3)]

    procs = [R.start(home, ["run", "--batch", str(b), *R.tiny_args()], f"concurrent-{i}")
             for i, b in enumerate(batches)]
    codes = [p.wait(timeout=1200) for p in procs]

    for p in procs:
        for text in (p.stdout, p.stderr):
            assert "database is locked" not in text.lower(), text[-4000:]
    assert codes == [0, 0, 0], [p.stderr[-3000:] for p in procs]
    waited = sum("another continual update is running; waiting" in p.stderr for p in procs)
    assert waited >= 1, "the updates did not overlap, so this test proved nothing about concurrency"

    new = [v for v in R.versions(home) if v["version"] not in before]
    assert len(new) == 3, "one candidate per update"
    # A chain: each candidate was trained from, and compared with, the champion its predecessor made.
    parents = {v["tags"]["parent_version"] for v in new}
    chain = [champion]
    for _ in new:
        (child,) = [v["version"] for v in new if v["tags"]["parent_version"] == chain[-1]]
        chain.append(child)
    assert parents == set(chain[:-1])
    assert R.aliases(home)["champion"] == chain[-1] and R.aliases(home)["previous-champion"] == chain[-2]
    R.assert_registry_invariants(home)

    # The audit trail: one finished decision per candidate, each pointed to by its version, never overlapping.
    decisions = [r for r in R.gate_runs(home) if r["run_id"] not in audited_before]
    assert sorted(r["tags"]["candidate_version"] for r in decisions) == sorted(v["version"] for v in new)
    for v in new:
        (d,) = [r for r in decisions if r["tags"]["candidate_version"] == v["version"]]
        assert d["status"] == "FINISHED" and d["run_id"] == v["tags"]["gate_run_id"]
        assert d["tags"]["gate_decision"] == v["tags"]["gate_decision"] == "promoted"
        assert d["tags"]["champion_version"] == v["tags"]["parent_version"]
    spans = sorted((r["start"], r["end"]) for r in decisions)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans

    assert all(not b.exists() and (home / "processed" / b.name).is_file() for b in batches)
    assert R.network_attempts(home) == []
