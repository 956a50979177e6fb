"""Where batches wait and where they go: `inbox/`, `processed/` and `quarantine/` under one root, which is the home,
another local folder, or an fsspec URL (`s3://bucket/prefix`) that every worker of a team shares.

Stages read a batch from a local file: a batch behind a URL is first copied into `<home>/staging/` (`local_copy`).
Filing follows one rule (`file_away`): a batch that waited in the inbox is *moved* on, so a scheduled run never
picks it up twice; any other file (`continual-opd run --batch ~/data/b.jsonl`) is *copied*, so a user's own file
stays where it was. Nothing is overwritten: a taken name gets a UTC time stamp (`free_name`).

Remote stores need their fsspec driver (`s3fs` for S3, in the `server` extra) and take credentials and endpoint
from the environment only (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for an S3-compatible
server), never from the parameters, which the Prefect UI shows. A copy to S3 and a delete are two requests: a
process killed between them leaves the batch in both places, and the ledger then skips the inbox copy as
already trained on.
"""

import contextlib
import datetime as dt
import hashlib
import posixpath
import shutil
from pathlib import Path

import fsspec

from continual_opd.home import Home

REPORT_SUFFIXES = (".report.md", ".report.json")


class BatchStoreError(ValueError):
    """The batch location cannot be used; the message says what to install or fix."""


def check_location(location: str) -> str:
    """`location` if fsspec can open it (a folder, or a URL whose driver is installed), else `BatchStoreError`."""
    if not location:
        return location
    protocol, _ = fsspec.core.split_protocol(location)
    try:
        fsspec.get_filesystem_class(protocol or "file")
    except ImportError as exc:
        raise BatchStoreError(f"batch location {location!r} needs a driver that is not installed ({exc}); for "
                              "s3:// install the server extra: pip install -e '.[server]' (s3fs)") from None
    except ValueError as exc:
        raise BatchStoreError(f"batch location {location!r} cannot be opened: {exc}; give a folder or a URL that "
                              "fsspec knows, such as s3://bucket/prefix") from None
    return location


class BatchStore:
    """The three batch folders under `root` (a local folder or an fsspec URL)."""

    def __init__(self, root: str | Path):
        self.root = str(root).rstrip("/") or "/"

    @classmethod
    def at(cls, location: str, home: Home) -> "BatchStore":
        """The store of the setting `batches`: `location`, or the home itself when it is empty."""
        return cls(check_location(location) or home.root)

    def __repr__(self) -> str:
        return f"BatchStore({self.root!r})"

    @property
    def inbox(self) -> str:
        return join(self.root, "inbox")

    @property
    def processed(self) -> str:
        return join(self.root, "processed")

    @property
    def quarantine(self) -> str:
        return join(self.root, "quarantine")

    def list_inbox(self) -> list[str]:
        """Every file waiting in the inbox, oldest first (modification time, then name).

        Hidden files are skipped (write a batch as `.name.tmp` and rename it in); files of any other type are
        listed, so that a wrong format is quarantined with a clear report rather than left unnoticed.
        """
        fs, inbox = _open(self.inbox)
        if not fs.isdir(inbox):
            return []
        entries = [e for e in fs.ls(inbox, detail=True)
                   if e["type"] == "file" and not posixpath.basename(e["name"]).startswith(".")]
        entries.sort(key=lambda e: (_modified(e), posixpath.basename(e["name"])))
        return [_location(fs, e["name"]) for e in entries]

    def in_inbox(self, location: str | Path) -> bool:
        """Whether `location` is a file directly inside the inbox (so it is moved on, not copied)."""
        return in_folder(location, self.inbox)

    def free_name(self, folder: str, name: str) -> str:
        """`folder/name`, or `folder/<stem>.<UTC time><suffix>` when that (or its report) is taken."""
        fs, base = _open(folder)
        fs.makedirs(base, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        stem, suffix = posixpath.splitext(name)
        candidate, n = posixpath.join(base, name), 0
        while fs.exists(candidate) or fs.exists(candidate + REPORT_SUFFIXES[0]):
            n += 1
            candidate = posixpath.join(base, f"{stem}.{stamp}{'-' + str(n) if n > 1 else ''}{suffix}")
        return _location(fs, candidate)

    def file_away(self, location: str | Path, folder: str, destination: str | None = None) -> str:
        """Put the batch at `location` into `folder` (or at `destination`): moved from the inbox, else copied."""
        destination = destination or self.free_name(folder, name_of(location))
        dest_fs, dest = _open(destination)
        dest_fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        src_fs, src = _open(location)
        if self.in_inbox(location):
            src_fs.mv(src, dest)
        elif type(src_fs) is type(dest_fs):
            src_fs.copy(src, dest)
        else:
            with src_fs.open(src, "rb") as source, dest_fs.open(dest, "wb") as out:
                out.write(source.read())
        return destination


def join(location: str | Path, *parts: str) -> str:
    return str(Path(location, *parts)) if is_local(location) else posixpath.join(str(location), *parts)


def same(a: str | Path, b: str | Path) -> bool:
    """Whether two locations name the same file."""
    if not a or not b:
        return False
    (fs_a, path_a), (fs_b, path_b) = _open(a), _open(b)
    return type(fs_a) is type(fs_b) and path_a == path_b


def exists(location: str | Path) -> bool:
    fs, path = _open(location)
    return fs.isfile(path)


def in_folder(location: str | Path, folder: str | Path) -> bool:
    """Whether `location` is a file directly inside `folder` (same filesystem, same parent)."""
    (fs_a, a), (fs_b, b) = _open(location), _open(folder)
    return type(fs_a) is type(fs_b) and posixpath.dirname(a.rstrip("/")) == b.rstrip("/")


def is_local(location: str | Path) -> bool:
    return _is_local(_open(location)[0])


def local_copy(location: str | Path, home: Home) -> Path:
    """A local file with the batch's bytes: the file itself when it is local, else a fresh copy in the home."""
    fs, path = _open(location)
    if _is_local(fs):
        return Path(path)
    if not fs.isfile(path):
        raise FileNotFoundError(f"batch file {location} does not exist (or this worker may not read it)")
    dest = home.root / "staging" / hashlib.sha256(str(location).encode()).hexdigest()[:12] / posixpath.basename(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    fs.get_file(path, str(tmp))
    tmp.replace(dest)
    return dest


@contextlib.contextmanager
def staged(location: str | Path, home: Home):
    """`local_copy` for the length of a block; a downloaded copy is deleted at its end (the batch stays filed)."""
    local = local_copy(location, home)
    try:
        yield local
    finally:
        if not is_local(location):
            shutil.rmtree(local.parent, ignore_errors=True)


def write_text(location: str, text: str) -> None:
    fs, path = _open(location)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, text.encode())


def name_of(location: str | Path) -> str:
    return posixpath.basename(str(location).rstrip("/"))


def _open(location: str | Path):
    """(filesystem, path) of a location; a local path comes back absolute and resolved, a remote listing fresh."""
    fs, path = fsspec.core.url_to_fs(str(location))
    if _is_local(fs):
        return fs, str(Path(path).expanduser().resolve())
    fs.invalidate_cache()  # other workers change the shared store: never answer from this process's listing cache
    return fs, path


def _location(fs, path: str) -> str:
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols


def _modified(entry: dict) -> float:
    """An fsspec listing entry's modification time in seconds (local: `mtime`; S3: `LastModified`)."""
    value = entry.get("mtime", entry.get("LastModified", entry.get("last_modified", 0)))
    return value.timestamp() if isinstance(value, dt.datetime) else float(value or 0)
