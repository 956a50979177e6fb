"""Reading a batch file (JSONL or parquet rows `id`, `skill`, `prompt`, `answer`) with `datasets`.

Every stage that needs the rows calls `load_batch`, so the data contract, the teacher's rewards and
the distillation prompts all see exactly the same rows. Files that cannot be read raise
`UnreadableBatch` naming the file and the problem.
"""

import hashlib
import json
from pathlib import Path

from continual_opd.skills import Item

BATCH_COLUMNS = ("id", "skill", "prompt", "answer")
BATCH_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class UnreadableBatch(ValueError):
    """The batch file cannot be read as a table of the four batch columns."""

    def __init__(self, path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"batch file {path} cannot be read: {problem}")


def load_batch_table(path: str | Path):
    """The batch as a pandas DataFrame with exactly the batch columns, as loaded by `datasets`."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableBatch(path, "no such file")
    kind = BATCH_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UnreadableBatch(path, f"unsupported file type {path.suffix!r}; use .jsonl or .parquet")
    if path.stat().st_size == 0:
        raise UnreadableBatch(path, "the file is empty")
    from datasets import load_dataset

    try:
        ds = load_dataset(kind, data_files=str(path), split="train", keep_in_memory=True)
    except Exception as exc:  # datasets raises many types for truncated or malformed files
        cause = _innermost(exc)  # datasets wraps the parser's error in "An error occurred while generating..."
        raise UnreadableBatch(path, f"not valid {'JSON lines' if kind == 'json' else 'parquet'} ({cause.__class__.__name__}: "
                                    f"{str(cause).splitlines()[0][:300] if str(cause) else 'truncated file'})") from exc
    missing = [c for c in BATCH_COLUMNS if c not in ds.column_names]
    if missing:
        raise UnreadableBatch(path, f"missing column(s) {', '.join(missing)}; a batch needs {', '.join(BATCH_COLUMNS)}")
    df = ds.to_pandas()[list(BATCH_COLUMNS)]
    return df


def _innermost(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def text_cells(df, path: str | Path) -> dict[str, list]:
    """Each batch column as a list of `str` (valid text), `bytes` (text that is not valid UTF-8) or None (null).

    `datasets` keeps JSON strings as arrow strings without checking their UTF-8, so undecodable bytes are
    read here as bytes for the data contract to report row by row; a column holding numbers, lists or
    binary data is a wrong type and makes the file unreadable.
    """
    import math

    import pyarrow as pa

    cells: dict[str, list] = {}
    for column in BATCH_COLUMNS:
        array = df[column].array
        arrow = array.__arrow_array__() if hasattr(array, "__arrow_array__") else None
        if arrow is not None and (pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type)):
            raw = arrow.cast(pa.large_binary()).to_pylist()
            cells[column] = [None if b is None else _decode(b) for b in raw]
            continue
        values = []
        for row, value in enumerate(df[column].tolist(), start=1):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                values.append(None)
            elif isinstance(value, str):
                values.append(value)
            else:
                raise UnreadableBatch(path, f"column {column!r} holds {type(value).__name__} values (row {row}: "
                                            f"{value!r:.60}); every batch column must hold strings")
        cells[column] = values
    return cells


def _decode(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def load_batch(path: str | Path) -> list[Item]:
    """The batch rows as `Item`s (strings as given; the data contract decides whether they are acceptable)."""
    df = load_batch_table(path)
    return [Item(str(r.id), str(r.skill), str(r.prompt), str(r.answer)) for r in df.itertuples(index=False)]


def batch_digest(items: list[Item]) -> str:
    """sha256 of the canonical rows: independent of file format, row order and whitespace in the file."""
    rows = sorted(json.dumps([it.id, it.skill, it.prompt, it.answer]) for it in items)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def write_jsonl(items: list[Item], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        for it in items:
            handle.write(json.dumps({"id": it.id, "skill": it.skill, "prompt": it.prompt, "answer": it.answer}) + "\n")
    tmp.replace(path)
    return path
