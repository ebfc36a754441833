"""Fail writes fast while another process holds a database locked, so the event loop never waits on it.

sqlite waits for a lock inside the call, i.e. on the event loop, for up to `store.busy_timeout_ms`. Once a
write fails on a lock, the gate closes: every write raises `StoreUnavailable` at once, without touching
sqlite, until the pause ends; the next write is the probe. A probe that fails doubles the pause (from
`FIRST_PAUSE_S` up to `MAX_PAUSE_S`); one that succeeds opens the gate. So a lock held for minutes costs
the loop at most one busy timeout per pause, and writes resume within `MAX_PAUSE_S` of its release.
Reads are not gated: in WAL mode they do not wait for a writer's lock.

A neutral piece: the call store (`intercom.db`) and the engine's session store (`sessions.db`) share it.
The core passes its own `StoreUnavailable` (also a 503 domain error, `broker.core.write_gate`) as
`unavailable`, so its callers get an error the adapters already map.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable

__all__ = ["FIRST_PAUSE_S", "MAX_PAUSE_S", "StoreError", "StoreUnavailable", "WriteGate"]

log = logging.getLogger("intercom.store")

FIRST_PAUSE_S = 0.25
MAX_PAUSE_S = 2.0
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


class StoreError(Exception):
    """The database refused a write (disk full, locked, corrupt); nothing was half-written."""


class StoreUnavailable(StoreError):
    """Another process holds the database locked: retry after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(f"database locked by another process; nothing was changed, retry after {seconds} s")
        self.headers = {"Retry-After": str(seconds)}


class WriteGate:
    """Closed after a write fails on a lock; probed with a doubling pause; open again after a success."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic,
                 meanwhile: str = "writes are refused (REST 503)",
                 unavailable: type[StoreUnavailable] = StoreUnavailable) -> None:
        self.name = name
        self.unavailable = unavailable  # what `check` raises and `failed` returns while locked
        self.meanwhile = meanwhile  # what happens to writes while it is closed, for the log line
        self._clock = clock
        self._pause = 0.0  # 0: open
        self._retry_at = 0.0
        self._closed_at = 0.0
        self.refused = 0  # writes refused without trying since the gate last closed

    @property
    def is_open(self) -> bool:
        return self._pause == 0.0

    def retry_in(self) -> float:
        """Seconds until the next write may probe the lock (0 when the gate is open or the pause is over)."""
        return max(0.0, self._retry_at - self._clock()) if self._pause else 0.0

    def check(self) -> None:
        """Raise StoreUnavailable while the gate is closed and its pause has not ended."""
        if self._pause and (left := self._retry_at - self._clock()) > 0:
            self.refused += 1
            raise self.unavailable(left)

    def failed(self, exc: sqlite3.Error) -> StoreError:
        """The error to raise for a failed write; a lock closes the gate (or lengthens its pause)."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code not in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return StoreError(str(exc))
        now = self._clock()
        if not self._pause:
            self._closed_at, self.refused = now, 0
            log.error("%s is locked by another process (%s): %s until it is released", self.name, exc,
                      self.meanwhile)
        self._pause = min(MAX_PAUSE_S, self._pause * 2) if self._pause else FIRST_PAUSE_S
        self._retry_at = now + self._pause
        return self.unavailable(self._pause)

    def succeeded(self) -> None:
        """A write went through: open the gate."""
        if self._pause:
            log.warning("%s accepts writes again after %.1f s (%d writes refused meanwhile)",
                        self.name, self._clock() - self._closed_at, self.refused)
            self._pause = 0.0
