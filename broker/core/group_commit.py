"""Group commit for call transitions, keeping persist-then-notify.

A transition is *staged*: its statements run inside the open group transaction (under a savepoint, so a
failing one leaves the others intact) and its messages wait in an outbox. The group commits once per
event-loop tick (`call_soon`), then the outbox is published in order. A message therefore never leaves
before the transition it announces is committed; a crash before the commit loses the transitions and
their messages together. One commit per tick rather than per transition, since a commit (~100-150 µs)
costs more than the rest of the write.

If the commit fails, every transition of the group is undone in memory (newest first), its messages
are dropped, the `on_failure` callbacks run (e.g. an MQTT error reply) and `durable()` raises
`StoreError` (a 500 over REST), as a failed synchronous write does. While another
process holds the file locked, `stage` raises `StoreUnavailable` (503) at once (broker/core/write_gate.py).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from broker.core.store import Store, StoreError

__all__ = ["GroupCommit", "Meta", "Publisher"]

log = logging.getLogger("intercom.calls")


@dataclass(frozen=True, slots=True)
class Meta:
    """What an MQTT 5 subscriber gets beside a message; a 3.1.1 subscriber gets the message alone."""

    expiry_s: int | None = None  # Message Expiry Interval: never delivered after this many seconds
    correlation: bytes | None = None  # Correlation Data: the reply to a request that carried it
    # Still worth delivering? Once False the message counts as expired, for every subscriber (3.1.1 too).
    valid: Callable[[], bool] | None = None


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                meta: Meta | None = None) -> None:
        """Queue a message for delivery; never blocks."""


def _consume(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # every waiter may have gone (client disconnected): not an unretrieved error


class GroupCommit:
    """The call service's writes and messages: `stage` a transition, `publish` after its commit."""

    def __init__(self, store: Store, publisher: Publisher) -> None:
        self.store = store
        self.publisher = publisher
        self.commits = 0
        self.staged = 0  # transitions staged so far (a caller compares it to see whether it staged one)
        self._open = False  # a group with at least one staged transition
        self._outbox: list[tuple[str, bytes, int, bool, Meta | None]] = []
        self._undo: list[Callable[[], None]] = []
        self._on_failure: list[Callable[[], None]] = []
        self._after: list[Callable[[], None]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._tick: asyncio.Handle | None = None
        store.before_write = self.flush
        self.on_commit: Callable[[float], None] | None = None  # seconds each group commit took (/metrics)

    @property
    def pending(self) -> bool:
        """Transitions are staged but not committed yet."""
        return self._open

    def stage(self, write: Callable[[sqlite3.Connection], None], undo: Callable[[], None]) -> None:
        """Run `write` in the group transaction; raise StoreError (nothing of it kept) if it fails.

        `undo` reverts the caller's in-memory change should the group's commit fail.
        """
        gate = self.store.gate
        gate.check()  # StoreUnavailable at once while another process holds the file locked
        conn = self.store.db.conn
        try:
            if not conn.in_transaction:
                conn.execute("BEGIN")
            conn.execute("SAVEPOINT step")
        except sqlite3.Error as exc:
            raise gate.failed(exc) from exc
        try:
            write(conn)
            conn.execute("RELEASE step")
        except BaseException as exc:
            self._abandon_step(conn)
            if isinstance(exc, sqlite3.Error):
                raise gate.failed(exc) from exc
            raise
        self._undo.append(undo)
        self._open = True
        self.staged += 1
        if self._tick is None:
            try:
                self._tick = asyncio.get_running_loop().call_soon(self._on_tick)
            except RuntimeError:  # no loop (synchronous use): commit now
                self.flush()

    def _abandon_step(self, conn: sqlite3.Connection) -> None:
        """Take back the failed step's statements, keeping what the group staged before it."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO step")
                conn.execute("RELEASE step")
                if not self._open:
                    conn.rollback()  # the empty transaction this step opened
                return
        except sqlite3.Error:
            log.exception("could not roll back a failed call transition")
        # sqlite ended the transaction itself (disk full, I/O error), or it is in an unknown state: the
        # group cannot commit as staged, so it fails as a whole (_fail rolls back)
        if self._open:
            self._fail(StoreError("the database rolled back a group of call transitions"))
        elif conn.in_transaction:
            try:
                conn.rollback()
            except sqlite3.Error:
                log.exception("rollback after a failed call transition failed")

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                meta: Meta | None = None) -> None:
        """Send after the open group commits (now if none is open), in call order."""
        if self._open:
            self._outbox.append((topic, payload, qos, retain, meta))
        else:
            self._send(topic, payload, qos, retain, meta)

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool, meta: Meta | None) -> None:
        if meta is None:
            self.publisher.publish(topic, payload, qos, retain)
        else:
            self.publisher.publish(topic, payload, qos, retain, meta=meta)

    def on_failure(self, callback: Callable[[], None]) -> None:
        """Run `callback` if the open group's commit fails (ignored when nothing is staged)."""
        if self._open:
            self._on_failure.append(callback)

    def after(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the open group has ended, committed or not (now if none is open): e.g.
        the PUBACK of the MQTT request that staged a transition, so a crash before the commit leaves
        the request unacknowledged (the client sends it again) rather than acknowledged and lost."""
        if self._open:
            self._after.append(callback)
        else:
            callback()

    async def durable(self) -> None:
        """Return once everything staged so far is committed; raise StoreError if that commit failed."""
        if not self._open:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
            self._waiter.add_done_callback(_consume)
        await asyncio.shield(self._waiter)

    def _on_tick(self) -> None:
        self._tick = None
        self.flush()

    def flush(self) -> None:
        """Commit the open group, then publish its messages in order."""
        if not self._open:
            return
        started = time.perf_counter()
        try:
            self.store.db.conn.commit()
        except sqlite3.Error as exc:
            self._fail(self.store.gate.failed(exc))
            return
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started)
        self.store.gate.succeeded()
        after = self._after
        outbox, waiter = self._take()
        self.commits += 1
        for topic, payload, qos, retain, meta in outbox:
            try:
                self._send(topic, payload, qos, retain, meta)
            except Exception:
                log.exception("could not publish on %s after commit", topic)
        self._run_after(after)
        if waiter is not None:
            waiter.set_result(None)

    @staticmethod
    def _run_after(callbacks: list[Callable[[], None]]) -> None:
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a post-commit callback failed")

    def _take(self) -> tuple[list[tuple[str, bytes, int, bool, Meta | None]], asyncio.Future[None] | None]:
        outbox, waiter = self._outbox, self._waiter
        self._outbox, self._undo, self._on_failure, self._after, self._waiter = [], [], [], [], None
        self._open = False
        return outbox, waiter

    def _fail(self, error: StoreError) -> None:
        log.error("database refused a group of %d call transition(s): %s; undone, nobody told",
                  len(self._undo), error)
        try:
            self.store.db.conn.rollback()
        except sqlite3.Error:
            log.exception("rollback after a failed commit failed")
        undo, failure, after = self._undo, self._on_failure, self._after
        _, waiter = self._take()
        for callback in [*reversed(undo), *failure]:
            try:
                callback()
            except Exception:
                log.exception("undoing a call transition failed")
        self._run_after(after)  # the requests were handled (refused with an error reply): acknowledge them
        if waiter is not None:
            waiter.set_exception(error)
