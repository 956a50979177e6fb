"""The ledger of accepted batches: one JSON line per batch, keyed by its content digest.

It is how a re-sent copy is recognised (same rows in any order or format, same digest) and where the
shift check finds the last accepted batch of a skill. It lives beside the files it describes, in
`processed/ledger.jsonl`; writers hold `locks/batch-ledger.lock`. A line is appended *before* the
file is moved, so a crash between the two leaves the file where it was, recognised next time as a
duplicate: never an accepted batch without a line, which could be trained on twice.
"""

import json
from pathlib import Path

from continual_opd.home import Home, file_lock


def ledger_path(home: Home) -> Path:
    return home.processed / "ledger.jsonl"


def lock(home: Home):
    return file_lock(home.locks / "batch-ledger.lock")


def entries(home: Home) -> list[dict]:
    path = ledger_path(home)
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"batch ledger {path} line {number} is not JSON ({exc.msg}); fix or remove that line") from exc
    return out


def find(home: Home, digest: str) -> dict | None:
    """The ledger entry of an accepted batch with this content digest, if any."""
    return next((e for e in entries(home) if e.get("digest") == digest), None)


def last_for_skill(home: Home, skill: str) -> dict | None:
    """The most recently accepted batch of a skill (the shift check's reference)."""
    return next((e for e in reversed(entries(home)) if e.get("skill") == skill), None)


def append(home: Home, entry: dict) -> None:
    """Append one entry; call with the lock held."""
    path = ledger_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()
