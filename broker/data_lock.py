"""The data dir's lock: a running box holds an exclusive `flock` on `<data_dir>/intercom.pid` (holding its pid).

Another process that wants to start on, or restore into, the same data dir sees the lock and refuses, naming
the pid. The kernel drops the lock when the process dies, so a crash never leaves a stale lock behind. Within
one process the lock is counted (several in-process servers in tests share a data dir in turn).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from broker.db_open import StorageError

__all__ = ["DataDirInUse", "acquire", "holder", "release"]

LOCK_NAME = "intercom.pid"
_held: dict[Path, list[int]] = {}  # lock path -> [fd, count]


class DataDirInUse(StorageError):
    """Another intercom-broker process uses the data dir."""


def _path(data_dir: Path) -> Path:
    return (data_dir / LOCK_NAME).resolve()


def acquire(data_dir: Path) -> None:
    path = _path(data_dir)
    if path in _held:
        _held[path][1] += 1
        return
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot create the lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DataDirInUse(f"data dir {data_dir} is in use by another intercom-broker (pid {pid}): "
                           "stop it first") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[path] = [fd, 1]


def release(data_dir: Path) -> None:
    path = _path(data_dir)
    entry = _held.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[path]
        os.close(entry[0])  # closing drops the flock; the file stays (another box may hold it by now)


def holder(data_dir: Path) -> int | None:
    """The pid of the box running on `data_dir`, or None when none is."""
    path = _path(data_dir)
    if path in _held:
        return os.getpid()
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            with contextlib.suppress(ValueError):
                return int(text)
            return -1
        return None
    finally:
        os.close(fd)
