"""The contract's report: which expectations failed, on how many rows, with example rows and a fix.

One structured record (`ContractReport`) is built from GX's results and the derived frame; the
markdown, the exception message, the Prefect table and the JSON artifact are all views of it, so
they never disagree.
"""

from pydantic import BaseModel, Field

from data_contracts import suite_json

EXAMPLE_COLUMNS = ("row", "id", "skill", "prompt", "answer")


class ExpectationOutcome(BaseModel):
    """One expectation of one suite, as GX judged it."""

    suite: str
    check: str = Field(description="Stable id of the check (meta.check in the suite JSON).")
    title: str
    expectation: str = Field(description="GX expectation type.")
    column: str | None = None
    success: bool
    failing_rows: int | None = Field(None, description="Rows that fail a row-level expectation.")
    rows_checked: int | None = None
    observed: object = Field(None, description="Observed value of a table or aggregate expectation.")
    examples: list[dict] = Field(default_factory=list, description="A few failing rows with the checked value.")
    fix: str = ""
    severity: str = Field("error", description="'error' fails the contract; 'warning' (distribution shift) only warns.")

    def summary(self) -> str:
        if self.failing_rows is not None:
            return f"{self.failing_rows} of {self.rows_checked} rows fail"
        shown = f"{self.observed:.4g}" if isinstance(self.observed, float) else repr(self.observed)
        return f"observed {shown}"


class ContractReport(BaseModel):
    """Everything the contract found about one batch file."""

    file: str
    contract_version: str
    success: bool
    rows: int = 0
    digest: str | None = None
    skill: str | None = Field(None, description="The batch's single target skill, when it has one.")
    problem: str | None = Field(None, description="Why the file could not be read at all (then nothing else ran).")
    expectations: list[ExpectationOutcome] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    shift_reference: dict | None = Field(None, description="The accepted batch the shift was measured against.")
    quarantined: str | None = None
    report_files: list[str] = Field(default_factory=list)
    data_docs: str | None = None
    mlflow_run_id: str | None = None

    def failed(self) -> list[ExpectationOutcome]:
        """Failed expectations that fail the contract (a shift above threshold is a warning unless configured)."""
        return [e for e in self.expectations if not e.success and e.severity == "error"]

    def headline(self) -> str:
        if self.problem:
            return f"batch file {self.file} cannot be read: {self.problem}"
        if self.success:
            return (f"batch file {self.file} passes the data contract {self.contract_version}: {self.rows} rows of "
                    f"{self.skill}, all {len(self.expectations)} expectations met")
        return (f"batch file {self.file} violates the data contract {self.contract_version}: "
                f"{len(self.failed())} of {len(self.expectations)} expectations failed ({self.rows} rows)")

    def message(self, max_examples: int = 3) -> str:
        """Plain text for the exception and the log: each failure, its count, a few rows, the fix."""
        lines = [self.headline()]
        for e in self.failed():
            lines.append(f"- {e.check}: {e.title}: {e.summary()}")
            for ex in e.examples[:max_examples]:
                lines.append(f"    {_example_text(ex)}")
            if e.fix:
                lines.append(f"    fix: {e.fix}")
        lines += [f"warning: {w}" for w in self.warnings]
        lines += _where(self)
        return "\n".join(lines)

    def markdown(self, max_examples: int = 5) -> str:
        """The readable report: quarantined beside the file, logged to MLflow, printed by `validate`."""
        verdict = "cannot be read" if self.problem else "PASSED" if self.success else "FAILED"
        lines = [f"# Data contract {verdict}: `{self.file}`", "",
                 f"contract `{self.contract_version}` | {self.rows} rows | skill `{self.skill or '-'}` | "
                 f"digest `{(self.digest or '-')[:16]}`", ""]
        if self.problem:
            lines += [f"**The file cannot be read:** {self.problem}", "",
                      "Fix the file (JSON lines or parquet with string columns id, skill, prompt, answer) and send "
                      "it again."]
        failed = self.failed()
        if failed:
            lines += [f"## {len(failed)} of {len(self.expectations)} expectations failed", ""]
            for e in failed:
                lines += [f"### `{e.check}`: {e.title}", "", f"{e.summary()} (GX `{e.expectation}`"
                          + (f" on `{e.column}`" if e.column else "") + ")", ""]
                if e.examples:
                    keys = list(dict.fromkeys(k for ex in e.examples[:max_examples] for k in ex))
                    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                    lines += ["| " + " | ".join(_cell(ex.get(k)) for k in keys) + " |" for ex in e.examples[:max_examples]]
                    lines.append("")
                if e.fix:
                    lines += [f"Fix: {e.fix}", ""]
        if self.warnings:
            lines += ["## Warnings", "", *[f"- {w}" for w in self.warnings], ""]
        passed = [e for e in self.expectations if e.success]
        if passed:
            lines += [f"## {len(passed)} expectations met", "",
                      *[f"- `{e.check}`: {e.title} ({e.summary()})" for e in passed], ""]
        where = _where(self)
        if where:
            lines += ["## Where things are", "", *[f"- {w}" for w in where]]
        return "\n".join(lines).rstrip() + "\n"


def _where(report: ContractReport) -> list[str]:
    out = []
    if report.quarantined:
        out.append(f"quarantined to {report.quarantined}")
    out += [f"report: {f}" for f in report.report_files]
    if report.data_docs:
        out.append(f"Data Docs: {report.data_docs}")
    if report.mlflow_run_id:
        out.append(f"MLflow run: {report.mlflow_run_id}")
    return out


def _example_text(example: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in example.items())


def _cell(value) -> str:
    text = "" if value is None else repr(value) if isinstance(value, str) else str(value)
    return text.replace("|", "\\|")


def outcomes(gx_results: list[dict], suites: list[str], frame) -> list[ExpectationOutcome]:
    """One outcome per expectation, in the suite files' order, with example rows taken from `frame`."""
    by_row = frame.set_index("row", drop=False)
    out = []
    for suite, result in zip(suites, gx_results):
        found = {r["expectation_config"]["meta"]["check"]: r for r in result["results"]}
        for spec in suite_json(suite)["expectations"]:
            meta = spec["meta"]
            r = found[meta["check"]]
            res, column = r.get("result") or {}, spec["kwargs"].get("column")
            row_level = "unexpected_count" in res
            error = (r.get("exception_info") or {}).get("raised_exception")
            examples = []
            for hit in res.get("partial_unexpected_index_list") or []:
                row = by_row.loc[hit["row"]]
                example = {k: row[k] for k in EXAMPLE_COLUMNS}
                if column and column not in EXAMPLE_COLUMNS:
                    example[column] = row[column]
                examples.append({k: (v.item() if hasattr(v, "item") else v) for k, v in example.items()})
            observed = None if row_level else res.get("observed_value")
            if error:  # never a silent pass: a check GX could not evaluate fails and says why
                observed = f"GX could not evaluate it: {r['exception_info'].get('exception_message')}"
            out.append(ExpectationOutcome(
                suite=suite, check=meta["check"], title=meta["title"], expectation=spec["type"], column=column,
                success=bool(r["success"]), failing_rows=res.get("unexpected_count") if row_level else None,
                rows_checked=res.get("element_count") if row_level else None,
                observed=observed, examples=examples, fix=meta.get("fix", "")))
    return out


def contract_table(report) -> list[dict]:
    """Rows for a Prefect table artifact: one per expectation, failures first."""
    if isinstance(report, dict):
        report = ContractReport.model_validate(report)
    if report.problem:
        return [{"check": "readable", "result": "FAILED", "detail": report.problem, "examples": "", "fix":
                 "send JSON lines or parquet with string columns id, skill, prompt, answer"}]
    rows = []
    for e in sorted(report.expectations, key=lambda e: (e.success, e.severity != "error")):
        result = "passed" if e.success else "FAILED" if e.severity == "error" else "warning"
        rows.append({"check": e.check, "result": result, "detail": e.summary(),
                     "examples": "; ".join(_example_text(x) for x in e.examples[:3]),
                     "fix": "" if e.success else e.fix})
    return rows
