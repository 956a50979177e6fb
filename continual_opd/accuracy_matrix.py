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

The matrix is registry state in MLflow, so every worker of a team reads and extends the same one:

- a cell is a tag of the model version, `matrix.acc.<suite>` (its accuracy, written once);
- a row is a tag of the registered model, `matrix.row.<000001>` (JSON: version, event, target skill, the
  audit run of `gate-decisions` that made it, the time), numbered in order;
- a suite's role (target or core) is a tag of the registered model, `matrix.role.<suite>`, so the views
  need no skill catalogue.

Rows are appended by the gate, under its lock (`gates.locking`), and every gate decision logs the whole
matrix to its audit run (`gate/accuracy_matrix.json`). Before MLflow held it, the matrix was a file in each
home (`accuracy_matrix.json`); the first access from such a home copies it into the registry (rows only
for a model that has none there yet, cells only where a version has none) and renames the file
`accuracy_matrix.json.migrated`, so it happens once; the log says so. The `home` argument of the functions
here is where such a file may wait, nothing more.
"""

import json
import logging
import os
import time

from continual_opd import registry
from continual_opd.home import Home, file_lock

LEGACY_FILE = "accuracy_matrix.json"
CELL_TAG, ROW_TAG, ROLE_TAG = "matrix.acc.", "matrix.row.", "matrix.role."
log = logging.getLogger(__name__)


def load(home: Home, model_name: str) -> dict:
    """One model's matrix: `accuracy` (version -> suite -> accuracy), `rows` (champions in order), `roles`."""
    _migrate_once(home)
    tags = _model_tags(model_name)
    accuracy = {}
    if tags is not None:
        for version in registry.client().search_model_versions(f"name='{model_name}'"):
            cells = {k[len(CELL_TAG):]: float(v) for k, v in version.tags.items() if k.startswith(CELL_TAG)}
            if cells:
                accuracy[str(version.version)] = cells
    tags = tags or {}
    return {"accuracy": accuracy, "rows": _rows(tags),
            "roles": {k[len(ROLE_TAG):]: v for k, v in tags.items() if k.startswith(ROLE_TAG)}}


def record_accuracy(home: Home, model_name: str, version: str, accuracies: dict[str, float],
                    roles: dict[str, str]) -> None:
    """Fill in this version's cells for suites it has no number for yet (first measurement wins).

    `roles` (suite -> target or core) is kept with the matrix, so its views need no skill catalogue.
    """
    _migrate_once(home)
    _set_cells(model_name, str(version), accuracies)
    client = registry.client()
    for suite, role in roles.items():
        client.set_registered_model_tag(model_name, ROLE_TAG + suite, role)


def append_row(home: Home, model_name: str, version: str, event: str, target_skill: str = "",
               run_id: str = "") -> None:
    """Add a row: `version` became champion by `event` (baseline, promoted, rollback). Call it under the gate lock."""
    _migrate_once(home)
    _append(model_name, {"version": str(version), "event": event, "target_skill": target_skill, "run_id": run_id,
                         "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def snapshot(home: Home, model_name: str) -> dict[str, str]:
    """The model's rows as stored, to put back with `restore` when a decision is undone."""
    _migrate_once(home)
    return {k: v for k, v in (_model_tags(model_name) or {}).items() if k.startswith(ROW_TAG)}


def restore(home: Home, model_name: str, rows: dict[str, str]) -> None:
    client = registry.client()
    for key in snapshot(home, model_name).keys() - rows.keys():
        client.delete_registered_model_tag(model_name, key)
    for key, value in rows.items():
        client.set_registered_model_tag(model_name, key, value)


def taught_skills(home: Home, model_name: str) -> list[str]:
    """Target skills taught by promoted updates so far, in order of first teaching."""
    _migrate_once(home)
    rows = _rows(_model_tags(model_name) or {})
    return list(dict.fromkeys(r["target_skill"] for r in rows if r["event"] == "promoted" and r["target_skill"]))


def _rows(tags: dict[str, str]) -> list[dict]:
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(ROW_TAG))]


def _model_tags(model_name: str) -> dict[str, str] | None:
    """The registered model's tags, or None when the registry has no such model."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(registry.client().get_registered_model(model_name).tags)
    except MlflowException:
        return None


def _append(model_name: str, row: dict) -> None:
    from mlflow.exceptions import MlflowException

    client = registry.client()
    tags = _model_tags(model_name)
    if tags is None:
        try:
            client.create_registered_model(model_name)
        except MlflowException:
            pass  # created meanwhile
        tags = {}
    numbers = [int(k[len(ROW_TAG):]) for k in tags if k.startswith(ROW_TAG)]
    client.set_registered_model_tag(model_name, f"{ROW_TAG}{max(numbers, default=0) + 1:06d}",
                                    json.dumps(row, sort_keys=True))


def _set_cells(model_name: str, version: str, accuracies: dict[str, float]) -> None:
    client = registry.client()
    have = registry.get_version(model_name, version).tags
    for suite, acc in accuracies.items():
        if CELL_TAG + suite not in have:
            client.set_model_version_tag(model_name, version, CELL_TAG + suite, repr(float(acc)))


def _migrate_once(home: Home) -> None:
    """Copy a home's `accuracy_matrix.json` into the registry once, then rename it (see the module docstring)."""
    path = home.root / LEGACY_FILE
    if not path.is_file():
        return
    with file_lock(home.locks / "accuracy_matrix.lock"):
        if not path.is_file():  # another process of this home migrated it while we waited
            return
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"accuracy matrix {path} is corrupt ({exc}); restore it from the latest "
                             "gate/accuracy_matrix.json artifact in the MLflow experiment gate-decisions, or "
                             "remove it") from exc
        done = []
        for model_name, model in data.get("models", {}).items():
            done.append(_migrate_model(model_name, model))
        os.replace(path, path.with_name(path.name + ".migrated"))
    log.warning(f"moved the accuracy matrix {path} into the MLflow registry ({'; '.join(done) or 'no models'}); "
                f"the file is kept as {path.name}.migrated and no longer read")


def _migrate_model(model_name: str, model: dict) -> str:
    tags = _model_tags(model_name)
    if tags is None:
        return f"{model_name}: skipped, no such registered model in this registry"
    rows = model.get("rows", [])
    has_rows = any(k.startswith(ROW_TAG) for k in tags)
    if not has_rows:
        for row in rows:
            _append(model_name, row)
    cells = 0
    for version, accuracies in model.get("accuracy", {}).items():
        try:
            _set_cells(model_name, version, accuracies)
            cells += len(accuracies)
        except registry.RegistryError:
            pass  # a version this registry does not have
    client = registry.client()
    for suite, role in model.get("roles", {}).items():
        if ROLE_TAG + suite not in tags:
            client.set_registered_model_tag(model_name, ROLE_TAG + suite, role)
    return (f"{model_name}: {0 if has_rows else len(rows)} rows"
            f"{' (the registry had rows already)' if has_rows else ''}, up to {cells} cells")


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
