"""The accuracy matrix across updates, with ACC and BWT as defined by GEM (Lopez-Paz and Ranzato, 2017).

Rows are the successive champions of a registered model (the baseline champion, then one row per
promotion or rollback); columns are suites. R[i][j] is the strict accuracy of row i's version on suite
j, measured by the forgetting suite: a version's accuracy on a suite does not depend on when it was
measured (suites are fixed by `tasks.suites`), so cells are stored per version and filled in whenever a
version is evaluated on a suite it had no number for.

GEM, with T the last row: ACC = mean_j R[T][j]; BWT = mean over tasks j learned before T of
(R[T][j] - R[t_j][j]), where t_j is the row right after task j was learned. Here a task is a suite;
a target suite is learned at the last promotion that targeted it, a core suite at the first row (the
pretrained baseline). Suites never taught (a target that no promoted update taught) count in neither.

The file lives in the home (`accuracy_matrix.json`), is rewritten atomically under a lock, and is
logged to MLflow with every gate decision.
"""

import json
import os
import time
import uuid
from pathlib import Path

from continual_opd.home import Home, file_lock

MATRIX_FILE = "accuracy_matrix.json"


def matrix_path(home: Home) -> Path:
    return home.root / MATRIX_FILE


def load(home: Home) -> dict:
    path = matrix_path(home)
    if not path.is_file():
        return {"models": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"accuracy matrix {path} is corrupt ({exc}); restore it from the latest "
                         "gate/accuracy_matrix.json artifact in the MLflow experiment gate-decisions") from exc


def _save(home: Home, data: dict) -> None:
    path = matrix_path(home)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _model(data: dict, model_name: str) -> dict:
    return data["models"].setdefault(model_name, {"accuracy": {}, "rows": []})


def record_accuracy(home: Home, model_name: str, version: str, accuracies: dict[str, float],
                    roles: dict[str, str]) -> None:
    """Fill in this version's cells for suites it has no number for yet (first measurement wins).

    `roles` (suite -> target or core) is kept with the matrix, so its views need no skill catalogue.
    """
    with file_lock(home.locks / "accuracy_matrix.lock"):
        data = load(home)
        model = _model(data, model_name)
        cells = model["accuracy"].setdefault(str(version), {})
        for suite, acc in accuracies.items():
            cells.setdefault(suite, float(acc))
        model.setdefault("roles", {}).update(roles)
        _save(home, data)


def append_row(home: Home, model_name: str, version: str, event: str, target_skill: str = "",
               run_id: str = "") -> None:
    """Add a row: `version` became champion by `event` (baseline, promoted, rollback)."""
    with file_lock(home.locks / "accuracy_matrix.lock"):
        data = load(home)
        _model(data, model_name)["rows"].append({"version": str(version), "event": event,
                                                 "target_skill": target_skill, "run_id": run_id,
                                                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        _save(home, data)


def snapshot(home: Home) -> str | None:
    """The file's bytes, to put back on rollback (None when it does not exist)."""
    path = matrix_path(home)
    return path.read_text() if path.is_file() else None


def restore(home: Home, text: str | None) -> None:
    with file_lock(home.locks / "accuracy_matrix.lock"):
        path = matrix_path(home)
        if text is None:
            path.unlink(missing_ok=True)
        else:
            tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
            tmp.write_text(text)
            os.replace(tmp, path)


def taught_skills(home: Home, model_name: str) -> list[str]:
    """Target skills taught by promoted updates so far, in order of first teaching."""
    rows = load(home)["models"].get(model_name, {}).get("rows", [])
    return list(dict.fromkeys(r["target_skill"] for r in rows if r["event"] == "promoted" and r["target_skill"]))


def _is_target(model: dict, suite: str) -> bool:
    """A target suite: so recorded, or (a matrix written before roles were kept) taught by some row."""
    role = model.get("roles", {}).get(suite)
    return role == "target" if role else any(r["target_skill"] == suite for r in model.get("rows", []))


def columns(model: dict) -> list[str]:
    """Suites with a number in some row: targets first, then cores, each in order of first measurement."""
    seen = list(dict.fromkeys(suite for row in model.get("rows", [])
                              for suite in model["accuracy"].get(row["version"], {})))
    return sorted(seen, key=lambda s: not _is_target(model, s))


def gem_metrics(model: dict) -> dict[str, float | None]:
    """ACC and BWT (GEM) of a model's matrix; None where no cell supports them."""
    rows = model.get("rows", [])
    acc = model.get("accuracy", {})
    if not rows:
        return {"ACC": None, "BWT": None}
    last = len(rows) - 1
    final = acc.get(rows[last]["version"], {})
    learned_at: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row["event"] == "promoted" and row["target_skill"]:
            learned_at[row["target_skill"]] = i
    for suite in columns(model):
        if suite not in learned_at and not _is_target(model, suite):
            learned_at[suite] = 0
    acc_cells = [final[s] for s in learned_at if s in final]
    transfers = []
    for suite, t in learned_at.items():
        if t < last and suite in final and suite in acc.get(rows[t]["version"], {}):
            transfers.append(final[suite] - acc[rows[t]["version"]][suite])
    return {"ACC": sum(acc_cells) / len(acc_cells) if acc_cells else None,
            "BWT": sum(transfers) / len(transfers) if transfers else None}


def render_markdown(model_name: str, model: dict) -> str:
    """The matrix as a markdown table (rows = champions in order, cells in %), with ACC and BWT."""
    rows = model.get("rows", [])
    if not rows:
        return f"No accuracy matrix yet for {model_name}: it starts with the first gate decision."
    cols = columns(model)
    lines = ["| # | version | event | taught | " + " | ".join(cols) + " |",
             "|---|---|---|---|" + "---|" * len(cols)]
    for i, row in enumerate(rows):
        cells = model["accuracy"].get(row["version"], {})
        values = [f"{100 * cells[c]:.1f}" if c in cells else "" for c in cols]
        lines.append(f"| {i} | v{row['version']} | {row['event']} | {row['target_skill'] or '-'} | "
                     + " | ".join(values) + " |")
    gem = gem_metrics(model)
    acc = "n/a" if gem["ACC"] is None else f"{100 * gem['ACC']:.1f}%"
    bwt = "n/a" if gem["BWT"] is None else f"{100 * gem['BWT']:+.1f} points"
    lines.append("")
    lines.append(f"ACC {acc}, BWT {bwt} (GEM, Lopez-Paz and Ranzato 2017)")
    return "\n".join(lines)
