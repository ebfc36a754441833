"""`sessions.db`: persistent MQTT sessions, their subscriptions, queued and in-flight messages, and
retained messages, in sqlite (WAL) next to the call database; written through by
`session_persistence`'s containers and read back whole at start (`SessionDB.load`).

Writes pass a `WriteGate` as `intercom.db`'s do: while another process holds the file locked, a write costs
the loop at most one busy timeout per pause, and the writes made meanwhile are kept in memory, in order, and
written in one transaction when a probe finds the lock gone (a timer probes; shutdown probes once more). At
most `MAX_KEPT` are kept; past that, and for what is still kept at shutdown, the loss is logged (the
messages themselves are still delivered from memory while the server runs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.db_open import naming, open_db
from broker.limiter import LogThrottle
from broker.migrations import SESSIONS, upgrade
from broker.mqtt.message import IncomingMessage, Message, MessageProps, OutgoingMessage, props_of
from broker.mqtt.sub_options import SubOptions
from broker.write_gate import MAX_PAUSE_S, WriteGate

__all__ = ["SessionDB", "StoredSession"]

log = logging.getLogger("intercom.sessions")
_quiet = LogThrottle()
MAX_KEPT = 100_000  # writes kept in memory while sessions.db is locked
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_Write = tuple[str, tuple[Any, ...]]

def _dump(msg: Message) -> bytes | None:
    props = props_of(msg)
    return props.dump() if props is not None else None


@dataclass(frozen=True)
class StoredSession:
    client_id: str
    username: str | None
    subscriptions: list[tuple[str, int]]
    inflight: list[tuple[int, str, bytes, int, bool]]
    queued: list[tuple[int, str, bytes, int]]
    last_seen: float = 0.0
    incoming: list[tuple[int, str, bytes, bool]] = field(default_factory=list)  # QoS 2 awaiting PUBREL
    expiry_s: int | None = None  # MQTT 5 Session Expiry Interval (None: a 3.1.1 session)
    options: dict[str, SubOptions] = field(default_factory=dict)  # MQTT 5 subscription options
    props: dict[tuple[str, int], MessageProps] = field(default_factory=dict)  # ("queue"|"inflight"|"incoming", key)


class SessionDB:
    """sqlite mirror of persistent sessions; a failed write is logged, never raised into delivery."""

    def __init__(self, path: Path | None, busy_timeout_ms: int = 100, check: bool = True) -> None:
        """Open (and quick_check) the file: a damaged one is moved aside with an ERROR and replaced by an
        empty one (clients see session present = 0 and subscribe again); an unusable path raises StorageError."""
        if path is None:
            self.conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        else:
            self.conn = open_db(path, busy_timeout_ms=busy_timeout_ms, check=check, move_aside=True,
                                isolation_level=None)
        with naming(path or Path(":memory:")):
            upgrade(self.conn, path, SESSIONS)
        self.frozen = False  # set at shutdown: amqtt then empties every queue, which must not reach disk
        self._seq = 0
        # offline-queue rows get their ids here, so a row written later (kept while locked) is still deletable
        self._queue_id = int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM mqtt_queue").fetchone()[0])
        self.gate = WriteGate(path.name if path is not None else ":memory:",
                              meanwhile="session writes are kept in memory and written")
        self._kept: deque[_Write] = deque()  # writes made while the gate was closed, in order
        self.on_forget: Callable[[str], None] | None = None  # told of each client id whose state is dropped
        self._timer: asyncio.TimerHandle | None = None

    def _write(self, sql: str, params: Iterable[Any] = ()) -> None:
        self._write_all([(sql, tuple(params))])

    def _write_all(self, writes: list[_Write]) -> None:
        """Run `writes` (in one transaction if several), or keep them while the gate is closed."""
        if self.frozen:
            return
        if self._kept or not self.gate.is_open:
            self._keep(writes)
            return
        try:
            if len(writes) == 1:
                self.conn.execute(*writes[0])
            else:
                with self.conn:
                    self.conn.execute("BEGIN")
                    for sql, params in writes:
                        self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            if _locked(exc):
                self.gate.failed(exc)
                self._keep(writes)
            else:
                log.exception("session store write failed: %s", writes[0][0].split("(")[0])

    def _keep(self, writes: list[_Write]) -> None:
        room = MAX_KEPT - len(self._kept)
        if room < len(writes):
            _quiet.log(log, logging.ERROR, "sessions.db kept", "sessions.db is still locked and %d writes are kept: "
                       "not keeping more; messages queued meanwhile are lost at a restart", MAX_KEPT)
            writes = writes[:max(room, 0)]
        self._kept.extend(writes)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None or not self._kept:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the next write probes instead
            self._timer = asyncio.get_running_loop().call_later(max(self.gate.retry_in(), 0.01), self.flush)

    def flush(self) -> bool:
        """Write what was kept while the gate was closed, in one transaction; True when nothing is left kept."""
        self._timer = None
        if not self._kept:
            return True
        if self.gate.retry_in() > 0:
            self._arm()
            return False
        try:
            self.conn.execute("BEGIN IMMEDIATE")  # takes the write lock first: a lock still held fails here
            for sql, params in self._kept:
                try:
                    self.conn.execute(sql, params)
                except sqlite3.Error as exc:
                    if _locked(exc):
                        raise
                    log.exception("session store write failed: %s", sql.split("(")[0])
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            if _locked(exc):
                self.gate.failed(exc)
                self._arm()
            else:
                log.exception("session store: could not write %d kept writes", len(self._kept))
                with contextlib.suppress(RuntimeError):
                    self._timer = asyncio.get_running_loop().call_later(MAX_PAUSE_S, self.flush)
            return False
        log.info("sessions.db: wrote the %d session writes kept while it was locked", len(self._kept))
        self._kept.clear()
        self.gate.succeeded()
        return True

    def settle(self) -> None:
        """At shutdown: one last try to write what is kept; what cannot be written is logged as lost."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._kept and not self.frozen:
            self.gate = WriteGate(self.gate.name, meanwhile=self.gate.meanwhile)  # probe now, not after the pause
            if not self.flush():
                log.error("sessions.db is still locked at shutdown: %d session writes (queued messages, "
                          "subscriptions) are lost", len(self._kept))
                self._kept.clear()

    # sessions and subscriptions ------------------------------------------------------------------

    def touch(self, client_id: str, username: str | None, expiry_s: int | None = None) -> None:
        self._write("INSERT INTO mqtt_sessions (client_id, username, last_seen, expiry_s) VALUES (?, ?, ?, ?) ON "
                    "CONFLICT (client_id) DO UPDATE SET username = excluded.username, last_seen = excluded.last_seen, "
                    "expiry_s = excluded.expiry_s", (client_id, username, time.time(), expiry_s))

    def forget(self, client_id: str) -> None:
        if self.on_forget is not None:
            self.on_forget(client_id)
        self._write_all([(f"DELETE FROM {table} WHERE client_id = ?", (client_id,)) for table in
                         ("mqtt_sessions", "mqtt_subscriptions", "mqtt_queue", "mqtt_inflight", "mqtt_incoming")])

    def subscribe(self, client_id: str, topic: str, qos: int, options: SubOptions | None = None) -> None:
        self._write("INSERT OR REPLACE INTO mqtt_subscriptions (client_id, topic, qos, options, sub_id) "
                    "VALUES (?, ?, ?, ?, ?)", (client_id, topic, qos, None if options is None else options.encode(),
                                               None if options is None else options.sub_id))

    def unsubscribe(self, client_id: str, topic: str) -> None:
        self._write("DELETE FROM mqtt_subscriptions WHERE client_id = ? AND topic = ?", (client_id, topic))

    # messages -------------------------------------------------------------------------------------

    def queue_put(self, client_id: str, msg: Message) -> int | None:
        self._queue_id += 1
        self._write("INSERT INTO mqtt_queue (id, client_id, topic, payload, qos, props) VALUES (?, ?, ?, ?, ?, ?)",
                    (self._queue_id, client_id, msg.topic, bytes(msg.data or b""), msg.qos or 0, _dump(msg)))
        return self._queue_id

    def queue_del(self, row_id: int | None) -> None:
        if row_id is not None:
            self._write("DELETE FROM mqtt_queue WHERE id = ?", (row_id,))

    def inflight_put(self, client_id: str, packet_id: int, msg: OutgoingMessage) -> None:
        self._seq += 1
        self._write("INSERT OR REPLACE INTO mqtt_inflight (client_id, packet_id, seq, topic, payload, qos, released, "
                    "props) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                    (client_id, packet_id, self._seq, msg.topic, bytes(msg.data or b""), msg.qos or 0, _dump(msg)))

    def inflight_released(self, client_id: str, packet_id: int) -> None:
        self._write("UPDATE mqtt_inflight SET released = 1 WHERE client_id = ? AND packet_id = ?",
                    (client_id, packet_id))

    def inflight_del(self, client_id: str, packet_id: int) -> None:
        self._write("DELETE FROM mqtt_inflight WHERE client_id = ? AND packet_id = ?", (client_id, packet_id))

    def incoming_put(self, client_id: str, msg: IncomingMessage) -> None:
        self._write("INSERT OR REPLACE INTO mqtt_incoming (client_id, packet_id, topic, payload, retain, props) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (client_id, msg.packet_id, msg.topic, bytes(msg.data or b""), int(bool(msg.retain)), _dump(msg)))

    def incoming_del(self, client_id: str, packet_id: int | None = None) -> None:
        """Forget one held incoming QoS 2 message, or (no packet id) all of a client's."""
        if packet_id is None:
            self._write("DELETE FROM mqtt_incoming WHERE client_id = ?", (client_id,))
        else:
            self._write("DELETE FROM mqtt_incoming WHERE client_id = ? AND packet_id = ?", (client_id, packet_id))

    # retained messages ----------------------------------------------------------------------------

    def retain(self, topic: str, payload: bytes, qos: int, props: MessageProps | None = None) -> None:
        if payload:
            self._write("INSERT OR REPLACE INTO mqtt_retained (topic, payload, qos, props) VALUES (?, ?, ?, ?)",
                        (topic, payload, qos, props.dump() if props is not None else None))
        else:
            self._write("DELETE FROM mqtt_retained WHERE topic = ?", (topic,))

    def retained(self) -> list[tuple[str, bytes, int, MessageProps | None]]:
        return [(t, bytes(p), q, MessageProps.load(x))
                for t, p, q, x in self.conn.execute("SELECT topic, payload, qos, props FROM mqtt_retained")]

    # loading --------------------------------------------------------------------------------------

    def idle(self, older_than: float, now: float | None = None) -> list[str]:
        """Client ids whose session was last seen before `older_than`, or (MQTT 5) more than its own
        Session Expiry Interval before `now`."""
        now = time.time() if now is None else now
        return [r[0] for r in self.conn.execute(
            "SELECT client_id FROM mqtt_sessions WHERE last_seen < ? OR (expiry_s IS NOT NULL AND "
            "last_seen + expiry_s < ?)", (older_than, now))]

    def expire(self, older_than: float) -> int:
        old = self.idle(older_than)
        for client_id in old:
            self.forget(client_id)
        return len(old)

    def load(self) -> list[StoredSession]:
        c = self.conn
        self._seq = int(c.execute("SELECT COALESCE(MAX(seq), 0) FROM mqtt_inflight").fetchone()[0])
        out = []
        for client_id, username, last_seen, expiry_s in c.execute(
                "SELECT client_id, username, last_seen, expiry_s FROM mqtt_sessions ORDER BY client_id"):
            props: dict[tuple[str, int], MessageProps] = {}
            options: dict[str, SubOptions] = {}
            subs: list[tuple[str, int]] = []
            for t, q, o, sid in c.execute("SELECT topic, qos, options, sub_id FROM mqtt_subscriptions "
                                          "WHERE client_id = ? ORDER BY topic", (client_id,)):
                subs.append((t, int(q)))
                if o is not None:
                    options[t] = SubOptions.decode(int(o), sid)
            inflight = []
            for pid, t, p, q, r, x in c.execute("SELECT packet_id, topic, payload, qos, released, props FROM "
                                                "mqtt_inflight WHERE client_id = ? ORDER BY seq", (client_id,)):
                inflight.append((int(pid), t, bytes(p), int(q), bool(r)))
                if (mp := MessageProps.load(x)) is not None:
                    props["inflight", int(pid)] = mp
            queued = []
            for i, t, p, q, x in c.execute("SELECT id, topic, payload, qos, props FROM mqtt_queue WHERE client_id = ? "
                                           "ORDER BY id", (client_id,)):
                queued.append((int(i), t, bytes(p), int(q)))
                if (mp := MessageProps.load(x)) is not None:
                    props["queue", int(i)] = mp
            incoming = []
            for pid, t, p, r, x in c.execute("SELECT packet_id, topic, payload, retain, props FROM mqtt_incoming "
                                             "WHERE client_id = ? ORDER BY packet_id", (client_id,)):
                incoming.append((int(pid), t, bytes(p), bool(r)))
                if (mp := MessageProps.load(x)) is not None:
                    props["incoming", int(pid)] = mp
            out.append(StoredSession(client_id, username, subs, inflight, queued, float(last_seen), incoming,
                                     None if expiry_s is None else int(expiry_s), options, props))
        return out

    def close(self) -> None:
        self.conn.close()


def _locked(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
