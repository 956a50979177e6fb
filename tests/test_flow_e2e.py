"""The real continual-update flow, end to end on the demo world, in this process, offline.

Every non-loopback connection is refused and recorded while the flow runs: the test fails on any attempt
to reach the network (telemetry, a hub download, a remote tracking server).
"""

import socket
from pathlib import Path

import pytest

from cli.outcome import EXIT_SKIPPED

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture()
def offline(monkeypatch):
    """Refuse and record every connection that is not to the loopback interface."""
    attempts = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def loopback(address) -> bool:
        if isinstance(address, (str, bytes)):  # AF_UNIX
            return True
        host = str(address[0])
        return host in ("localhost", "::1") or host.startswith("127.")

    def guarded(real):
        def connect(self, address):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not loopback(address):
                attempts.append(address)
                raise ConnectionRefusedError(f"offline test: connection to {address} refused")
            return real(self, address)
        return connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in (None, "localhost", "127.0.0.1", "::1", b"localhost") and not str(host).startswith("127."):
            attempts.append(("dns", host))
            raise socket.gaierror(f"offline test: name lookup of {host} refused")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert attempts == [], f"the flow tried to reach the network: {attempts}"


def test_the_real_flow_runs_all_five_stages_offline(champion, home, offline):
    from continual_opd import registry
    from cli.main import main
    from demo_world.skills import CATALOGUE
    from continual_opd.batch_io import write_jsonl

    batch = write_jsonl(CATALOGUE["add"].items("train", 512, seed=777), home.inbox / "e2e-add.jsonl")
    before = registry.aliases(registry.STUDENT_MODEL)[registry.CHAMPION]

    code = main(["run", "--batch", str(batch), "--config", str(SMOKE)])

    assert code in (0, 3), "the update ends with a decision: promoted (0) or rejected (3)"
    client = registry.client()
    exp = client.get_experiment_by_name("continual-updates")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'update'", order_by=["start_time DESC"])
    update = runs[0]
    assert update.info.status == "FINISHED"
    assert update.data.tags["flow_run_id"] and update.data.tags["champion_version"] == before
    stages = {r.data.tags.get("stage") for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{update.info.run_id}'")}
    assert {"validate", "teacher_rl", "distill", "evaluate"} <= stages, stages

    candidate = max(client.search_model_versions(f"name='{registry.STUDENT_MODEL}'"), key=lambda v: int(v.version))
    assert candidate.tags["parent_version"] == before
    assert candidate.tags["flow_run_id"] == update.data.tags["flow_run_id"]
    for key in registry.LINEAGE_TAGS:
        assert candidate.tags.get(key), key
    after = registry.aliases(registry.STUDENT_MODEL)
    if code == 0:
        assert after[registry.CHAMPION] == str(candidate.version) and after[registry.PREVIOUS_CHAMPION] == before
    else:
        assert after[registry.CHAMPION] == before and candidate.tags["gate_decision"] == "rejected"

    items = Path(client.download_artifacts(update.info.run_id, "", dst_path=str(home.root / "dl")))
    assert items.exists()
    assert not batch.exists() and (home.processed / batch.name).exists(), "an accepted batch moves to processed/"

    # The same rows again (a re-sent copy under another name) are recognised and skipped, and the skip is said.
    copy = home.inbox / "e2e-add-resent.jsonl"
    copy.write_text((home.processed / batch.name).read_text())
    assert main(["run", "--batch", str(copy), "--config", str(SMOKE)]) == EXIT_SKIPPED
    assert registry.aliases(registry.STUDENT_MODEL) == after
