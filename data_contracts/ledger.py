"""The ledger of accepted batches: one MLflow run per batch in the experiment `batch-ledger`, keyed by its content digest.

It is how a re-sent copy is recognised (same rows in any order or format, same digest), on any machine that
shares the tracking server, and where the shift check finds the last accepted batch of a skill. A run's tags
say what a reader needs without a download (`data_digest`, `skill`, `batch_file`, `batch_source`,
`batch_path`, `accepted_at`, `accepted_by`, ...); `ledger/entry.json` holds the whole entry with the batch's
shift profile. An entry is written before the file is filed away (see `tasks.validate.mark_processed`), so a
crash between the two leaves the file where it was, recognised next time as a duplicate: never an accepted
batch without an entry, which could be trained on twice. A run still RUNNING (its writer died before the
profile was stored) counts as accepted all the same; the shift check reads finished runs only.

Writers are serialised by the update lock (across machines with a Prefect server) and, in one home, by
`lock(home)`. Should two writers ever record the same digest, the earliest entry is the one reported.

Before MLflow held it, the ledger was `processed/ledger.jsonl` in each home. The first access from such a home
copies its entries into MLflow (skipping digests already there) and renames the file `ledger.jsonl.migrated`,
so it happens once; the log says so.
"""

import json
import logging
import os
import socket
from pathlib import Path

from continual_opd import registry
from continual_opd.home import Home, file_lock

LEDGER_EXPERIMENT = "batch-ledger"
ENTRY_ARTIFACT = "ledger/entry.json"
TAGGED = {"digest": "data_digest", "skill": "skill", "file": "batch_file", "source": "batch_source",
          "path": "batch_path", "contract_version": "contract_version", "accepted_at": "accepted_at",
          "rows": "rows", "accepted_by": "accepted_by", "migrated_from": "migrated_from"}
MAX_TAG = 5000
log = logging.getLogger(__name__)


def legacy_path(home: Home) -> Path:
    return home.processed / "ledger.jsonl"


def lock(home: Home):
    return file_lock(home.locks / "batch-ledger.lock")


def find(home: Home, digest: str) -> dict | None:
    """The ledger entry of an accepted batch with this content digest, if any (the earliest, should there be two)."""
    runs = _search(home, f"tags.data_digest = '{_quoted(digest)}'", "ASC")
    return _entry(runs[0]) if runs else None


def last_for_skill(home: Home, skill: str) -> dict | None:
    """The most recently accepted batch of a skill (the shift check's reference), with its `profile`."""
    runs = _search(home, f"tags.skill = '{_quoted(skill)}' and attributes.status = 'FINISHED'", "DESC")
    if not runs:
        return None
    import mlflow

    return mlflow.artifacts.load_dict(f"{runs[0].info.artifact_uri}/{ENTRY_ARTIFACT}")


def append(home: Home, entry: dict) -> str:
    """Record one accepted batch (call with the lock held); returns the ledger run's id."""
    _migrate_once(home)
    return _record({**entry, "accepted_by": f"{socket.gethostname()}:{home.root}"})


def _record(entry: dict) -> str:
    client = registry.client()
    tags = {tag: _clip(str(entry[key])) for key, tag in TAGGED.items() if entry.get(key) not in (None, "")}
    run = client.create_run(registry.experiment_id(LEDGER_EXPERIMENT),
                            tags={**tags, "mlflow.runName": str(entry.get("file", entry["digest"][:16]))})
    client.log_dict(run.info.run_id, entry, ENTRY_ARTIFACT)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _search(home: Home, where: str, order: str) -> list:
    _migrate_once(home)
    return _runs(where, order)


def _runs(where: str, order: str = "ASC") -> list:
    if _store_missing():
        return []
    client = registry.client()
    experiment = client.get_experiment_by_name(LEDGER_EXPERIMENT)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], where, max_results=1,
                              order_by=[f"attributes.start_time {order}"])


def _entry(run) -> dict:
    tags = run.data.tags
    entry = {key: tags[tag] for key, tag in TAGGED.items() if tag in tags}
    return {**entry, "rows": int(entry.get("rows", 0)), "run_id": run.info.run_id}


def _store_missing() -> bool:
    """A home whose SQLite store does not exist yet has accepted nothing; reading must not create it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file()


def _migrate_once(home: Home) -> None:
    """Copy a home's `processed/ledger.jsonl` into MLflow once (idempotent: digests already there are skipped)."""
    path = legacy_path(home)
    if not path.is_file():
        return
    with lock(home):
        if not path.is_file():  # another process of this home migrated it while we waited
            return
        added = kept = 0
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"batch ledger {path} line {number} is not JSON ({exc.msg}); fix or remove that "
                                 "line, and the next run moves the ledger into MLflow") from exc
            if _runs(f"tags.data_digest = '{_quoted(entry['digest'])}'"):
                kept += 1
                continue
            _record({**entry, "migrated_from": str(path), "accepted_by": entry.get("accepted_by", "")})
            added += 1
        done = path.with_name(path.name + ".migrated")
        os.replace(path, done)
    log.warning(f"moved the batch ledger {path} into MLflow (experiment {LEDGER_EXPERIMENT}): {added} entries added, "
                f"{kept} already there; the file is kept as {done} and no longer read")


def _quoted(value: str) -> str:
    return str(value).replace("'", "\\'")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TAG else text[:MAX_TAG - 3] + "..."
