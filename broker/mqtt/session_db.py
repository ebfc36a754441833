"""`sessions.db`: persistent MQTT sessions, their subscriptions, queued and in-flight messages, and
retained messages, in sqlite (WAL) next to the call database; written through by
`session_persistence`'s containers and read back whole at start (`SessionDB.load`)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.session import ApplicationMessage

from broker.db_open import naming, open_db
from broker.migrations import SESSIONS, upgrade
from broker.mqtt.v5.message import MessageProps, props_of
from broker.mqtt.v5.subscriptions import SubOptions

__all__ = ["SessionDB", "StoredSession"]

log = logging.getLogger("intercom.sessions")

def _dump(msg: ApplicationMessage) -> bytes | None:
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

    def _write(self, sql: str, params: Iterable[Any] = ()) -> int | None:
        if self.frozen:
            return None
        try:
            return self.conn.execute(sql, tuple(params)).lastrowid
        except sqlite3.Error:
            log.exception("session store write failed: %s", sql.split("(")[0])
            return None

    # sessions and subscriptions ------------------------------------------------------------------

    def touch(self, client_id: str, username: str | None, expiry_s: int | None = None) -> None:
        self._write("INSERT INTO mqtt_sessions (client_id, username, last_seen, expiry_s) VALUES (?, ?, ?, ?) ON "
                    "CONFLICT (client_id) DO UPDATE SET username = excluded.username, last_seen = excluded.last_seen, "
                    "expiry_s = excluded.expiry_s", (client_id, username, time.time(), expiry_s))

    def forget(self, client_id: str) -> None:
        if self.frozen:
            return
        try:
            with self.conn:
                self.conn.execute("BEGIN")
                for table in ("mqtt_sessions", "mqtt_subscriptions", "mqtt_queue", "mqtt_inflight", "mqtt_incoming"):
                    self.conn.execute(f"DELETE FROM {table} WHERE client_id = ?", (client_id,))
        except sqlite3.Error:
            log.exception("session store: could not forget %s", client_id)

    def subscribe(self, client_id: str, topic: str, qos: int, options: SubOptions | None = None) -> None:
        self._write("INSERT OR REPLACE INTO mqtt_subscriptions (client_id, topic, qos, options, sub_id) "
                    "VALUES (?, ?, ?, ?, ?)", (client_id, topic, qos, None if options is None else options.encode(),
                                               None if options is None else options.sub_id))

    def unsubscribe(self, client_id: str, topic: str) -> None:
        self._write("DELETE FROM mqtt_subscriptions WHERE client_id = ? AND topic = ?", (client_id, topic))

    # messages -------------------------------------------------------------------------------------

    def queue_put(self, client_id: str, msg: ApplicationMessage) -> int | None:
        return self._write("INSERT INTO mqtt_queue (client_id, topic, payload, qos, props) VALUES (?, ?, ?, ?, ?)",
                           (client_id, msg.topic, bytes(msg.data or b""), msg.qos or 0, _dump(msg)))

    def queue_del(self, row_id: int | None) -> None:
        if row_id is not None:
            self._write("DELETE FROM mqtt_queue WHERE id = ?", (row_id,))

    def inflight_put(self, client_id: str, packet_id: int, msg: ApplicationMessage) -> None:
        self._seq += 1
        self._write("INSERT OR REPLACE INTO mqtt_inflight (client_id, packet_id, seq, topic, payload, qos, released, "
                    "props) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                    (client_id, packet_id, self._seq, msg.topic, bytes(msg.data or b""), msg.qos or 0, _dump(msg)))

    def inflight_released(self, client_id: str, packet_id: int) -> None:
        self._write("UPDATE mqtt_inflight SET released = 1 WHERE client_id = ? AND packet_id = ?",
                    (client_id, packet_id))

    def inflight_del(self, client_id: str, packet_id: int) -> None:
        self._write("DELETE FROM mqtt_inflight WHERE client_id = ? AND packet_id = ?", (client_id, packet_id))

    def incoming_put(self, client_id: str, msg: ApplicationMessage) -> None:
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
