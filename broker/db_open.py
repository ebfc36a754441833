"""Opening a sqlite file at start: check it first, and name the file in one line when it cannot be used.

`open_db` runs `PRAGMA quick_check` before anything reads the file. A damaged file (corrupt pages, a
garbage header, a truncated file) is refused with `DatabaseDamaged`, or, where the caller says the
server can live without its content, moved aside to `<name>.corrupt-<UTC time>` (with its -wal/-shm)
with an ERROR naming both paths, and an empty file is opened in its place. A path the process cannot
open, read or write raises `StorageError` naming it. Nothing is lost silently: a moved file stays on
disk for the operator.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["BackupError", "DatabaseDamaged", "StorageError", "naming", "open_db"]

log = logging.getLogger("intercom.store")

# sqlite primary result codes that mean "the bytes are wrong", as opposed to "the path is unusable"
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_MAX_PROBLEMS = 3


class StorageError(Exception):
    """A file or directory the server needs cannot be used; the message is one line naming it."""


class BackupError(StorageError):
    """A backup cannot be made or restored; the message is one line saying why (`broker.backup`, and the PostgreSQL
    tools of `broker.scale.pg_ops`, which `broker.backup` calls: the error lives here so neither imports the other
    for it)."""


class DatabaseDamaged(StorageError):
    """The file is not a sound sqlite database."""


def open_db(path: Path, *, busy_timeout_ms: int, check: bool = True, move_aside: bool = False,
            isolation_level: str | None = "") -> sqlite3.Connection:
    """Open `path` in WAL mode after a quick_check; a damaged file is refused, or moved aside if `move_aside`."""
    try:
        return _open(path, busy_timeout_ms, check, isolation_level)
    except DatabaseDamaged as exc:
        if not move_aside:
            raise
        moved = _move_aside(path)
        log.error("%s; moved it to %s and starting with an empty %s (what it held is only in the moved file)",
                  exc, moved, path.name)
        return _open(path, busy_timeout_ms, check, isolation_level)


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Turn a sqlite error into a StorageError (or DatabaseDamaged) naming `path`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise _classify(path, exc) from exc


def _open(path: Path, busy_timeout_ms: int, check: bool, isolation_level: str | None) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the directory {path.parent} for {path.name}: {exc.strerror}") from exc
    with naming(path):
        # "" (sqlite3's default, deferred BEGIN) is valid at run time though typeshed lists only the keywords
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=isolation_level)  # type: ignore[arg-type]
    try:
        with naming(path):
            if check:
                problems = [str(row[0]) for row in conn.execute(f"PRAGMA quick_check({_MAX_PROBLEMS})")]
                if problems != ["ok"]:
                    raise DatabaseDamaged(f"database {path} is damaged (quick_check: {'; '.join(problems)[:300]})")
            # WAL: a crash never leaves a torn page; NORMAL keeps commits off fsync's critical path.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    except BaseException:
        conn.close()
        raise
    return conn


def _classify(path: Path, exc: sqlite3.Error) -> StorageError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return DatabaseDamaged(f"database {path} is damaged ({exc})")
    return StorageError(f"cannot use database {path}: {exc} (check that its directory exists and is writable)")


def _move_aside(path: Path) -> Path:
    """Rename the file and its -wal/-shm companions to `<name>.corrupt-<UTC time>[-wal|-shm]`."""
    moved = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    try:
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                source.rename(moved.with_name(moved.name + suffix))
    except OSError as exc:
        raise StorageError(f"database {path} is damaged and cannot be moved aside to {moved}: {exc.strerror}") from exc
    return moved
