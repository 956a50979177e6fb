"""Stage 1 of an update: the data contract. Bad data never reaches training.

`validate_batch` reads a batch file, derives the contract's columns, runs the GX suites in
`data_contracts/`, logs the result to MLflow (nested `validate` run), builds Data Docs into the home
and then either accepts the batch or quarantines it with its report. Nothing is deleted:

- accepted: `move=True` files the batch into `processed/` and records its content digest in the ledger
  at once; `move=False` (what the flow does) leaves it in place until `mark_processed` is called after
  the update has used it, so an update that fails later does not lose the batch;
- rejected (a failed expectation, or a file that cannot be read): the file and its report go to
  `quarantine/` whatever `move` says, so a scheduled run never picks the same bad file up again, and
  `ContractViolation` is raised (never retried: it is not transient);
- already accepted (same digest): `DuplicateBatch` is raised and an inbox copy goes to `processed/duplicates/`.

The folders are those of a `BatchStore` (`continual_opd.batch_store`: the home's by default, or a shared
folder or bucket), and filing follows its rule: a batch that waited in the inbox is moved, any other file
is copied, so `continual-opd run --batch ~/data/b.jsonl` leaves the user's file where it was. A batch
behind a URL is read from a local copy in the home.

A batch teaches exactly one *target* skill (`AcceptedBatch.skill`): several target skills, core-skill
rows or unknown skills fail the contract, because one update trains one teacher and runs one gate.
`check_batch` alone is `continual-opd validate FILE`: the same checks and report, and no side effects.
"""

import datetime as dt
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator

from continual_opd import batch_store
from continual_opd.batch_io import UnreadableBatch, batch_digest, load_batch, load_batch_table, text_cells
from continual_opd.batch_store import BatchStore
from continual_opd.config import StrictConfig
from continual_opd.home import Home
from continual_opd.modelio import load_tokenizer
from continual_opd.records import AcceptedBatch
from continual_opd.skills import Catalogue, Item
from continual_opd.tracking import stage_run
from data_contracts import ROWS_SUITE, SHIFT_SUITE, contract_version, ledger
from data_contracts.contamination import suite_index
from data_contracts.derive import TokenizerProbe, derive_frame
from data_contracts.gx_run import run_suites
from data_contracts.report import ContractReport, contract_table, outcomes  # noqa: F401 - contract_table is this stage's API
from data_contracts.shift import profile, shift_parameters



class ContractConfig(StrictConfig):
    """Settings of the data contract (the expectations themselves are versioned JSON in data_contracts/)."""

    min_rows: int = Field(1, ge=0, description="Fewest rows a batch may have.")
    max_rows: int = Field(100_000, ge=1, description="Most rows a batch may have.")
    min_prompt_tokens: int = Field(1, ge=0, description="Shortest prompt, in the student's tokens.")
    max_prompt_tokens: int = Field(40, ge=1, description="Longest prompt, in the student's tokens.")
    min_answer_tokens: int = Field(1, ge=0, description="Shortest answer, in the student's tokens.")
    max_answer_tokens: int = Field(16, ge=1, description="Longest answer, in the student's tokens.")
    contamination_ngram: int = Field(10, ge=2, description=(
        "Contamination: a prompt sharing this many consecutive normalised characters with an evaluation item "
        "(or containing a whole shorter item) is rejected."))
    shift_threshold: float = Field(0.1, ge=0, description=(
        "Distribution shift: largest KL(batch || last accepted batch of the skill) of a row feature, in nats."))
    fail_on_shift: bool = Field(False, description="Reject a batch whose shift is above the threshold (else warn).")
    max_examples: int = Field(3, ge=1, le=50, description="Example rows shown per failed expectation in messages.")

    @model_validator(mode="after")
    def _bounds_in_order(self):
        for low, high in (("min_rows", "max_rows"), ("min_prompt_tokens", "max_prompt_tokens"),
                          ("min_answer_tokens", "max_answer_tokens")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) is above {high} ({getattr(self, high)})")
        return self


class ContractViolation(Exception):
    """The batch failed the data contract. `.report` is structured, `.markdown` readable, `str()` a summary."""

    def __init__(self, report: ContractReport, max_examples: int = 3):
        self.report, self.max_examples = report, max_examples
        super().__init__(report.message(max_examples))

    def __reduce__(self):  # picklable for Prefect's persisted task results
        return type(self), (self.report, self.max_examples)

    @property
    def markdown(self) -> str:
        return self.report.markdown()

    @property
    def quarantined(self) -> Path | str | None:
        """Where the batch went: a local Path, or the URL in a shared store."""
        where = self.report.quarantined
        return None if not where else Path(where) if batch_store.is_local(where) else where


class UnreadableBatchError(ContractViolation):
    """The file is not a readable batch at all (format, truncation, column types, missing columns)."""

    @property
    def problem(self) -> str:
        return self.report.problem or ""


class DuplicateBatch(Exception):
    """A batch with the same content digest was already accepted: this update is skipped."""

    def __init__(self, path: str, digest: str, entry: dict, moved_to: str | None = None):
        self.path, self.digest, self.entry, self.moved_to = path, digest, entry, moved_to
        super().__init__(
            f"batch file {path} is skipped: the same rows (digest {digest[:16]}) were already accepted on "
            f"{entry.get('accepted_at', '?')} as {entry.get('file', '?')} (now {entry.get('path', '?')}); "
            + (f"this copy was moved to {moved_to}" if moved_to else "this copy was left in place"))

    def __reduce__(self):
        return type(self), (self.path, self.digest, self.entry, self.moved_to)


@dataclass
class Checked:
    """What `check_batch` found: the report, GX's raw results, and a ledger entry when it is a duplicate."""

    report: ContractReport
    gx_results: list
    duplicate_of: dict | None = None


@lru_cache(maxsize=4)
def student_tokenizer(folder: str):
    """The student's tokenizer (the contract checks what *it* can encode), loaded once per folder."""
    return load_tokenizer(folder)


def contract_parameters(cfg: ContractConfig, catalogue: Catalogue) -> dict:
    """The $PARAMETER values of batch_rows.json."""
    return {"min_rows": cfg.min_rows, "max_rows": cfg.max_rows, "known_skills": sorted(catalogue),
            "min_prompt_tokens": cfg.min_prompt_tokens, "max_prompt_tokens": cfg.max_prompt_tokens,
            "min_answer_tokens": cfg.min_answer_tokens, "max_answer_tokens": cfg.max_answer_tokens}


def check_batch(path: str | Path, cfg: ContractConfig, catalogue: Catalogue, suite_size: int, tokenizer,
                home: Home | None = None, docs: bool = False, stop_at_duplicate: bool = True) -> Checked:
    """Run the contract on one file and report; moves nothing, logs nothing.

    `catalogue` names the skills a row may have; the contamination check covers every evaluation suite of
    `suite_size` items that a gate of this catalogue uses. `home` supplies the ledger (duplicates, the shift
    reference) and, with `docs`, the Data Docs site.
    """
    path = Path(path)
    version = contract_version()
    try:
        cells = text_cells(load_batch_table(path), path)
    except UnreadableBatch as exc:
        return Checked(ContractReport(file=str(path), contract_version=version, success=False, problem=exc.problem), [])
    rows = len(cells["id"])
    digest = _cells_digest(cells)
    duplicate_of = ledger.find(home, digest) if home is not None else None
    base = dict(file=str(path), contract_version=version, rows=rows, digest=digest)
    if duplicate_of is not None and stop_at_duplicate:
        return Checked(ContractReport(**base, success=True), [], duplicate_of)

    frame = derive_frame(cells, TokenizerProbe(tokenizer), suite_index(catalogue, suite_size, cfg.contamination_ngram),
                         catalogue)
    known = frame["known_skill"].dropna().unique().tolist()
    skill = known[0] if len(known) == 1 and catalogue[known[0]].role == "target" else None
    reference = ledger.last_for_skill(home, skill) if home is not None and skill else None
    suites, parameters = [ROWS_SUITE], contract_parameters(cfg, catalogue)
    if reference is not None:
        suites.append(SHIFT_SUITE)
        parameters.update(shift_parameters(reference["profile"], cfg.shift_threshold))
    results, docs_index = run_suites(frame, suites, parameters, batch_name=path.name,
                                     docs_dir=home.data_docs if docs and home else None,
                                     results_dir=home.root / "gx-validation-results" if docs and home else None)
    found = outcomes(results, suites, frame)
    warnings = []
    for e in found:
        if e.suite == SHIFT_SUITE:
            e.severity = "error" if cfg.fail_on_shift else "warning"
            if not e.success:
                warnings.append(f"distribution shift ({e.check}): KL {_num(e.observed)} > {cfg.shift_threshold} "
                                f"against the last accepted {skill} batch {reference.get('file')} "
                                f"({reference.get('accepted_at')})")
    report = ContractReport(**base, success=all(e.success or e.severity == "warning" for e in found), skill=skill,
                            expectations=found, warnings=warnings, data_docs=docs_index,
                            shift_reference={k: reference.get(k) for k in ("file", "digest", "accepted_at", "path")}
                            if reference else None)
    return Checked(report, results, duplicate_of)


def _cells_digest(cells: dict) -> str:
    """`batch_digest` of the rows as `load_batch` would read them (undecodable bytes shown as U+FFFD)."""
    shown = [[v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in cells[c]]
             for c in ("id", "skill", "prompt", "answer")]
    return batch_digest([Item(*(str(col[i]) for col in shown)) for i in range(len(shown[0]))])


def ensure_new_batch(path: str | Path, home: Home, store: BatchStore | None = None) -> None:
    """Raise `DuplicateBatch` (and move an inbox copy to `processed/duplicates/`) if these rows were accepted before.

    Cheap (no GX, no tokenizer). A flow that caches the validate task by its inputs must call this
    outside the cache: a cached `AcceptedBatch` for a re-sent identical file would skip the ledger.
    A file that cannot be read passes here; `validate_batch` reports it.
    """
    local = batch_store.local_copy(path, home)
    try:
        digest = _cells_digest(text_cells(load_batch_table(local), local))
    except UnreadableBatch:
        return
    entry = ledger.find(home, digest)
    if entry is not None:
        _skip_duplicate(path, digest, entry, store or BatchStore.at("", home))


def _skip_duplicate(path: str | Path, digest: str, entry: dict, store: BatchStore):
    """An inbox copy moves to `processed/duplicates/`; a file given from elsewhere stays where it is."""
    moved = None
    if store.in_inbox(path) and batch_store.exists(path):
        moved = store.file_away(path, batch_store.join(store.processed, "duplicates"))
    raise DuplicateBatch(str(path), digest, entry, moved)


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "infinite"


def validate_batch(path: str, cfg: ContractConfig, catalogue: Catalogue, suite_size: int, tokenizer_folder: str,
                   home: Home, parent_run_id: str | None = None, move: bool = True,
                   store: BatchStore | None = None) -> AcceptedBatch:
    """Validate one batch (a local file or a URL); accept it (see the module docstring for `move`), or quarantine it
    and raise. `store` holds the inbox, `processed/` and `quarantine/` (default: the home's)."""
    import mlflow

    home.ensure()
    store = store or BatchStore.at("", home)
    local = batch_store.local_copy(path, home)
    checked = check_batch(local, cfg, catalogue, suite_size, student_tokenizer(str(tokenizer_folder)), home, docs=True)
    report = checked.report
    report.file = str(path)
    if checked.duplicate_of is not None:
        _skip_duplicate(path, report.digest, checked.duplicate_of, store)

    destination = None
    if not report.success and local.is_file():
        destination = store.free_name(store.quarantine, batch_store.name_of(path))
        report.quarantined = destination
        report.report_files = [f"{destination}{suffix}" for suffix in batch_store.REPORT_SUFFIXES]
    with stage_run("validate", parent_run_id, tags={"data_digest": report.digest or "",
                                                      "batch_file": batch_store.name_of(path),
                                                      "contract_version": report.contract_version,
                                                      "contract_passed": str(report.success).lower()}) as run:
        report.mlflow_run_id = run.info.run_id
        mlflow.log_metrics({"contract/rows": report.rows, "contract/failed_expectations": len(report.failed()),
                            "contract/warnings": len(report.warnings), "contract/passed": float(report.success)})
        mlflow.log_text(report.markdown(), "contract/report.md")
        mlflow.log_dict(report.model_dump(mode="json"), "contract/report.json")
        mlflow.log_dict({"results": checked.gx_results}, "contract/gx_validation_results.json")

    if not report.success:
        if destination is not None:
            _write_report(destination, report, checked.gx_results)
            store.file_away(path, store.quarantine, destination)
        error = UnreadableBatchError if report.problem else ContractViolation
        raise error(report, cfg.max_examples)

    accepted = AcceptedBatch(path=str(local), digest=report.digest, skill=report.skill, rows=report.rows,
                             contract_version=report.contract_version, warnings=tuple(report.warnings))
    return mark_processed(path, accepted, home, store) if move else accepted


def mark_processed(path: str | Path, batch: AcceptedBatch, home: Home,
                   store: BatchStore | None = None) -> AcceptedBatch:
    """Record an accepted batch in the ledger and file it into `processed/`; idempotent.

    `path` is where the batch came from (moved on from the inbox, copied from anywhere else). The flow
    calls this once the update has used the batch. The ledger entry is written first, so a crash between
    the two steps leaves the file where it was, to be recognised next time as a duplicate, never an
    accepted batch that could be trained on twice.
    """
    store = store or BatchStore.at("", home)
    source = str(path)
    with ledger.lock(home):
        existing = ledger.find(home, batch.digest)
        if existing is not None:
            done = existing.get("path", "")
            if batch_store.exists(source) and not batch_store.same(source, done):
                if done and batch_store.in_folder(done, store.processed) and not batch_store.exists(done):
                    store.file_away(source, store.processed, done)  # an interrupted attempt did not file it
                elif store.in_inbox(source):
                    store.file_away(source, store.processed)
            return batch.model_copy(update={"path": done})
        if not batch_store.exists(source):
            raise FileNotFoundError(f"cannot mark {source} processed: the file is gone (batch digest "
                                    f"{batch.digest[:16]})")
        items = load_batch(batch_store.local_copy(source, home))
        name = batch_store.name_of(source)
        filed = batch_store.in_folder(source, store.processed)
        destination = source if filed else store.free_name(store.processed, name)
        ledger.append(home, {"digest": batch.digest, "skill": batch.skill, "rows": batch.rows, "file": name,
                             "source": source, "path": destination, "contract_version": batch.contract_version,
                             "accepted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             "warnings": list(batch.warnings),
                             "profile": profile([it.prompt for it in items], [it.answer for it in items])})
        if not filed:
            store.file_away(source, store.processed, destination)
    return batch.model_copy(update={"path": destination})


def _write_report(destination: str, report: ContractReport, gx_results: list) -> None:
    batch_store.write_text(f"{destination}.report.md", report.markdown())
    batch_store.write_text(f"{destination}.report.json", json.dumps(
        {"report": report.model_dump(mode="json"), "gx_results": gx_results}, indent=1, default=str))
