"""History retention: ended calls (with their events and per-resident rows) and door events older than
`history.retention_days`, and device status history older than `history.status_days`, are deleted in small
batches, off the event loop.

The pruner opens its own connection to the file in a worker thread; each batch is one short transaction
(`batch` rows), so the loop's own writes wait at most one batch for the lock. A call whose snapshot is still
kept is left until the snapshot retention drops it (its row points at the file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path

__all__ = ["prune", "run_pruner"]

log = logging.getLogger("intercom.history")

_CALLS = ("SELECT call_id FROM calls WHERE status = 'ended' AND start_time < ? AND snapshot_at IS NULL"
          " LIMIT ?")
_DOORS = "SELECT id FROM door_events WHERE ts < ? LIMIT ?"
_STATUS = "SELECT id FROM device_status_history WHERE ts < ? LIMIT ?"


def prune(path: Path, cutoff: float | None, status_cutoff: float | None = None, batch: int = 500,
          busy_timeout_s: float = 2.0, pause_s: float = 0.0) -> int:
    """Delete calls and door events older than `cutoff`, status history older than `status_cutoff` (epoch
    seconds; None: keep), in transactions of `batch` rows; returns the rows deleted."""
    total = 0
    with contextlib.closing(sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None)) as conn:
        while cutoff is not None and (ids := [r[0] for r in conn.execute(_CALLS, (cutoff, batch))]):
            marks = ", ".join("?" * len(ids))
            conn.execute("BEGIN IMMEDIATE")
            for table in ("call_events", "resident_calls", "calls"):
                conn.execute(f"DELETE FROM {table} WHERE call_id IN ({marks})", ids)
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


async def run_pruner(path: Path, retention_days: float | None, status_days: float, interval_s: float,
                     batch: int) -> None:
    """Prune now and then every `interval_s`, until cancelled; a failed run is logged and retried next time."""
    while True:
        now = time.time()
        cutoff = now - retention_days * 86400 if retention_days is not None else None
        try:
            deleted = await asyncio.to_thread(prune, path, cutoff, now - status_days * 86400, batch, 2.0, 0.01)
        except sqlite3.Error as exc:
            log.error("history retention: pruning %s failed (%s); retrying in %g s", path, exc, interval_s)
        else:
            if deleted:
                log.info("history retention: deleted %d old rows (calls and door events older than %s days, "
                         "status history older than %g days)", deleted, retention_days, status_days)
        await asyncio.sleep(interval_s)
