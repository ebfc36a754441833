"""History retention: ended calls (with their events and per-resident rows) and door events older than
`history.retention_days`, and device status history older than `history.status_days`, are deleted in small
batches, off the event loop.

The pruner opens its own connection to the file in a worker thread; each batch is one short transaction
(`batch` rows), so the loop's own writes wait at most one batch for the lock. A call whose snapshot is still
kept is left until the snapshot retention drops it (its row points at the file).

The statements are plain SQL with `?` placeholders: `prune_batches` runs them on any connection that speaks
them, the PostgreSQL store's included (broker/scale/pg_ops.py), so both backends prune by the same rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Pruner", "prune", "prune_batches", "run_pruner", "sqlite_pruner"]

log = logging.getLogger("intercom.history")

_CALLS = ("SELECT call_id FROM calls WHERE status = 'ended' AND start_time < ? AND snapshot_at IS NULL"
          " LIMIT ?")
_DOORS = "SELECT id FROM door_events WHERE ts < ? LIMIT ?"
_STATUS = "SELECT id FROM device_status_history WHERE ts < ? LIMIT ?"


# (cutoff, status_cutoff, batch, pause_s) -> rows deleted: one pruning run against one store
Pruner = Callable[[float | None, float | None, int, float], int]


class _Conn(Protocol):
    """An autocommit connection: sqlite3's with isolation_level=None, or the PostgreSQL store's PgConnection."""

    def execute(self, sql: str, params: Any = ...) -> Any: ...


def prune_batches(conn: _Conn, cutoff: float | None, status_cutoff: float | None, batch: int, pause_s: float,
                  begin: str = "BEGIN IMMEDIATE") -> int:
    """Delete calls and door events older than `cutoff`, status history older than `status_cutoff` (epoch
    seconds; None: keep), in transactions of `batch` rows opened with `begin`; returns the rows deleted."""
    total = 0
    while cutoff is not None and (ids := [r[0] for r in conn.execute(_CALLS, (cutoff, batch))]):
        marks = ", ".join("?" * len(ids))
        conn.execute(begin)
        try:
            for table in ("call_events", "resident_calls", "calls"):
                conn.execute(f"DELETE FROM {table} WHERE call_id IN ({marks})", ids)
        except BaseException:
            with contextlib.suppress(Exception):  # a lost connection has no transaction left to undo
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        total += len(ids)
        time.sleep(pause_s)
    for table, select, before in (("door_events", _DOORS, cutoff), ("device_status_history", _STATUS,
                                                                    status_cutoff)):
        while before is not None and (ids := [r[0] for r in conn.execute(select, (before, batch))]):
            conn.execute(f"DELETE FROM {table} WHERE id IN ({', '.join('?' * len(ids))})", ids)
            total += len(ids)
            time.sleep(pause_s)
    return total


def prune(path: Path, cutoff: float | None, status_cutoff: float | None = None, batch: int = 500,
          busy_timeout_s: float = 2.0, pause_s: float = 0.0) -> int:
    """`prune_batches` on the sqlite file at `path`, over a connection of its own."""
    with contextlib.closing(sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None)) as conn:
        return prune_batches(conn, cutoff, status_cutoff, batch, pause_s)


def sqlite_pruner(path: Path) -> Pruner:
    return lambda cutoff, status_cutoff, batch, pause_s: prune(path, cutoff, status_cutoff, batch, 2.0, pause_s)


async def run_pruner(store: Path | tuple[str, Pruner], retention_days: float | None, status_days: float,
                     interval_s: float, batch: int) -> None:
    """Prune now and then every `interval_s`, until cancelled; a failed run is logged and retried next time.
    `store`: the sqlite file, or (its name for the logs, its pruner) for another backend."""
    where, pruner = (str(store), sqlite_pruner(store)) if isinstance(store, Path) else store
    while True:
        now = time.time()
        cutoff = now - retention_days * 86400 if retention_days is not None else None
        try:
            deleted = await asyncio.to_thread(pruner, cutoff, now - status_days * 86400, batch, 0.01)
        except sqlite3.Error as exc:  # the PostgreSQL store raises its errors as sqlite3's too
            log.error("history retention: pruning %s failed (%s); retrying in %g s", where, exc, interval_s)
        else:
            if deleted:
                log.info("history retention: deleted %d old rows (calls and door events older than %s days, "
                         "status history older than %g days)", deleted, retention_days, status_days)
        await asyncio.sleep(interval_s)
