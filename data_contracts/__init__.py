"""The data contract: great-expectations suites stored as versioned JSON, and the code that runs them.

`batch_rows.json` holds the row-level expectations every batch must meet; `batch_shift.json` compares
a batch with the last accepted batch of its skill. The expectations assert columns that
`derive.py` computes in Python (lengths in student tokens, unencodable characters, normalised prompts,
contamination with the evaluation suites), because GX's row-level SQL expectation does not run on
pandas. The contract's version is the suites' `meta.contract_version` plus a digest of their JSON, so
an edit that forgets to bump the version still shows up in `AcceptedBatch.contract_version`.
"""

import hashlib
import json
from functools import lru_cache
from pathlib import Path

CONTRACT_DIR = Path(__file__).resolve().parent
ROWS_SUITE = "batch_rows"
SHIFT_SUITE = "batch_shift"
SUITES = (ROWS_SUITE, SHIFT_SUITE)


@lru_cache(maxsize=None)
def _suite_text(name: str) -> str:
    return (CONTRACT_DIR / f"{name}.json").read_text()


def suite_json(name: str) -> dict:
    """A fresh copy of one suite's JSON (GX mutates what it is given)."""
    return json.loads(_suite_text(name))


def contract_version() -> str:
    """`<meta.contract_version>+<sha256 of the suite files>[:8]`, e.g. `1.0.0+3fa2b1c4`."""
    declared = {suite_json(name)["meta"]["contract_version"] for name in SUITES}
    if len(declared) != 1:
        raise ValueError(f"the contract's suites declare different versions {sorted(declared)}; bump them together")
    digest = hashlib.sha256("".join(_suite_text(name) for name in SUITES).encode()).hexdigest()[:8]
    return f"{declared.pop()}+{digest}"


def check_ids(name: str) -> list[str]:
    """The stable check ids of one suite, in order."""
    return [e["meta"]["check"] for e in suite_json(name)["expectations"]]
