"""Persistent MQTT sessions (clean session off) that survive disconnects, restarts and kill -9.

A `Session` (`broker/mqtt/session.py`) keeps its subscriptions, offline queue and in-flight messages in memory.
Each persistent session gets three write-through containers in place of its plain ones,

- `DurableInflight` for `Session.inflight_out`: an entry leaves when the client acknowledges it (the outlet's
  `acked` / `pubcomp` pop it: PUBACK, PUBCOMP, or a PUBREC refusing it), so the outlet re-sends it (DUP set) on
  the next connection (`PublishOutlet.resend_inflight`), also after a restart;
- `DurableQueue` for `Session.retained_messages` (the offline queue),
- `DurableIncoming` for `Session.inflight_in`: a QoS 2 message the client published, stored before
  PUBREC and kept until its PUBREL (MQTT 3.1.1 §4.3.3), so a restart in between loses nothing,

and `SessionDB` (`session_db.py`) mirrors both, plus subscriptions and retained messages, in `sessions.db` (sqlite,
WAL) next to the call database. `SessionPersistence` restores everything before the listeners
open. The amqtt-facing hooks live in `plugins.persistence`.

MQTT 5 adds columns (added to an older file on open): a session's Session Expiry Interval (its own expiry,
counted from when it was last seen, also across a restart), each subscription's options and identifier,
and each message's properties and expiry (`MessageProps.dump`), so a message that expired while queued
or retained is never delivered after a restart either.

The three containers report the payload bytes they hold to `Quotas` (`broker/mqtt/quota.py`), per principal:
a QoS 2 message past `limits.max_held_bytes_per_principal` is not held (`DurableIncoming.fits`), one past
`limits.max_queued_bytes_per_principal` is not queued, and the outlets stop sending QoS>0 to a session while
its principal's unacknowledged bytes pass `limits.max_inflight_bytes_per_principal` (`DurableInflight.fits`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from broker.limiter import LogThrottle
from broker.mqtt.amqtt_compat import BrokerContext
from broker.mqtt.hooks import PROTOCOL, SESSION_EXPIRY, SUB_OPTIONS
from broker.mqtt.message import IncomingMessage, Message, MessageProps, OutgoingMessage, RetainedMessage, props_of
from broker.mqtt.quota import HELD, INFLIGHT, QUEUED, Quotas, principal_of
from broker.mqtt.session import OfflineQueue, Session
from broker.mqtt.session_db import SessionDB
from broker.mqtt.sub_options import OptionsTable

__all__ = ["DurableIncoming", "DurableInflight", "DurableQueue", "SessionDB", "SessionPersistence"]

log = logging.getLogger("intercom.sessions")
_quiet = LogThrottle()  # a publisher flooding an offline session: one line per session every 5 s


def _size(msg: Message) -> int:
    return len(msg.data or b"")


class _Counted:
    """What a durable container needs to report its messages to the principal's quota."""

    def __init__(self, quotas: Quotas | None, principal: str, client_id: str) -> None:
        self.quotas = quotas or Quotas()
        self.principal = principal
        self.client_id = client_id

    def count(self, kind: int, nbytes: int) -> None:
        self.quotas.add(self.principal, self.client_id, kind, nbytes)

class DurableInflight(dict[int, OutgoingMessage]):
    """`Session.inflight_out` mirrored to sqlite: a message stays until the client acknowledged it.

    Acknowledgement is explicit: the outlet pops a message when its PUBACK or PUBCOMP comes (or a PUBREC refusing
    it), and only then. Everything else stays for the next connection, whose outlet re-sends it with DUP set
    (a QoS 2 one past PUBREC: its PUBREL, `released`). A message that expired meanwhile is not re-sent
    (`drop_expired`), to a 3.1.1 session as to a v5 one.
    """

    def __init__(self, db: SessionDB, client_id: str, quota: _Counted | None = None) -> None:
        super().__init__()
        self.db = db
        self.client_id = client_id
        self.quota = quota or _Counted(None, client_id, client_id)

    def fits(self, nbytes: int) -> bool:
        """Whether the principal's in-flight quota (`limits.max_inflight_bytes_per_principal`) has room."""
        return self.quota.quotas.fits(self.quota.principal, INFLIGHT, nbytes)

    def __setitem__(self, packet_id: int, msg: OutgoingMessage) -> None:
        old = super().get(packet_id)
        super().__setitem__(packet_id, msg)
        self.quota.count(INFLIGHT, _size(msg) - (_size(old) if old is not None else 0))
        self.db.inflight_put(self.client_id, packet_id, msg)

    def released(self, packet_id: int) -> None:
        """The client's PUBREC for a QoS 2 message came: from now on only its PUBREL is re-sent."""
        msg = super().get(packet_id)
        if msg is not None and not msg.released:
            msg.released = True
            self.db.inflight_released(self.client_id, packet_id)

    def restore(self, packet_id: int, msg: OutgoingMessage) -> None:
        super().__setitem__(packet_id, msg)
        self.quota.count(INFLIGHT, _size(msg))

    def drop_expired(self, now: float) -> int:
        """Before a resumed session's re-send: forget the messages whose expiry passed (a door command must
        not open a door late), unless a QoS 2 one is past PUBREC (then only its PUBREL is re-sent)."""
        gone = [packet_id for packet_id, msg in super().items()
                if (props := props_of(msg)) is not None and props.expired(now)
                and not (msg.qos == 2 and msg.released)]
        for packet_id in gone:
            msg = super().pop(packet_id)
            self.quota.count(INFLIGHT, -_size(msg))  # released from the principal's in-flight bytes too
            self.db.inflight_del(self.client_id, packet_id)
        return len(gone)

    def pop(self, packet_id: int, default: Any = None) -> Any:
        """The client acknowledged `packet_id`: forget it (quota and disk)."""
        msg = super().pop(packet_id, None)
        if msg is None:
            return default
        self.quota.count(INFLIGHT, -_size(msg))
        self.db.inflight_del(self.client_id, packet_id)
        return msg


class DurableIncoming(dict[int, IncomingMessage]):
    """`Session.inflight_in`, mirrored to sqlite: a QoS 2 message the client published is written before
    the broker sends PUBREC and deleted once its PUBREL has routed it."""

    def __init__(self, db: SessionDB, client_id: str, quota: _Counted | None = None) -> None:
        super().__init__()
        self.db = db
        self.client_id = client_id
        self.quota = quota or _Counted(None, client_id, client_id)

    def fits(self, nbytes: int) -> bool:
        """Whether the principal may hold `nbytes` more (`limits.max_held_bytes_per_principal`)."""
        return self.quota.quotas.fits(self.quota.principal, HELD, nbytes)

    def restore(self, packet_id: int, msg: IncomingMessage) -> None:
        super().__setitem__(packet_id, msg)
        self.quota.count(HELD, _size(msg))

    def __setitem__(self, packet_id: int, msg: IncomingMessage) -> None:
        old = super().get(packet_id)
        super().__setitem__(packet_id, msg)
        self.quota.count(HELD, _size(msg) - (_size(old) if old is not None else 0))
        self.db.incoming_put(self.client_id, msg)

    def __delitem__(self, packet_id: int) -> None:
        msg = super().get(packet_id)
        super().__delitem__(packet_id)
        if msg is not None:
            self.quota.count(HELD, -_size(msg))
        self.db.incoming_del(self.client_id, packet_id)

    def pop(self, packet_id: int, *default: Any) -> Any:
        if packet_id not in self:
            return default[0] if default else super().pop(packet_id)
        msg = super().pop(packet_id)
        self.quota.count(HELD, -_size(msg))
        self.db.incoming_del(self.client_id, packet_id)
        return msg

    def clear(self) -> None:
        self.quota.count(HELD, -sum(_size(msg) for msg in super().values()))
        super().clear()
        self.db.incoming_del(self.client_id)


class DurableQueue(OfflineQueue):
    """A persistent session's offline queue, mirrored to sqlite; when full the oldest message is dropped, and
    a message past the principal's byte quota (`limits.max_queued_bytes_per_principal`) is not kept."""

    __slots__ = ("_rows", "client_id", "db", "limit", "quota")

    def __init__(self, db: SessionDB, client_id: str, limit: int, quota: _Counted | None = None) -> None:
        super().__init__()
        self.db = db
        self.client_id = client_id
        self.limit = limit
        self.quota = quota or _Counted(None, client_id, client_id)
        self._rows: deque[int | None] = deque()

    def restore(self, row_id: int, msg: Message) -> None:
        super().put_nowait(msg)
        self.quota.count(QUEUED, _size(msg))
        self._rows.append(row_id)

    def put_nowait(self, item: Message) -> None:
        quota = self.quota
        if not quota.quotas.fits(quota.principal, QUEUED, _size(item)):
            _quiet.log(log, logging.WARNING, f"queued {quota.principal}",
                       "offline queue of %r: dropped a message on %r, %r's offline queues hold %d bytes "
                       "(limits.max_queued_bytes_per_principal)", self.client_id, item.topic, quota.principal,
                       quota.quotas.used(quota.principal, QUEUED))
            return
        if self.qsize() >= self.limit:
            dropped = self.get_nowait()
            _quiet.log(log, logging.WARNING, f"full {self.client_id}",
                       "offline queue of %r is full (%d): dropped the oldest message on %r",
                       self.client_id, self.limit, dropped.topic)
        super().put_nowait(item)
        quota.count(QUEUED, _size(item))
        self._rows.append(self.db.queue_put(self.client_id, item))

    def get_nowait(self) -> Message:
        item = super().get_nowait()
        self.quota.count(QUEUED, -_size(item))
        self.db.queue_del(self._rows.popleft())
        return item


class SessionPersistence:
    """Adopts persistent sessions into durable containers and restores them at start."""

    def __init__(self, db: SessionDB, queue_limit: int = 1000, expiry_s: float = 7 * 86400,
                 quotas: Quotas | None = None) -> None:
        self.db = db
        self.queue_limit = queue_limit
        self.expiry_s = expiry_s
        self.quotas = quotas or Quotas()
        db.on_forget = self.quotas.release  # a forgotten session holds nothing any more
        self._known: set[str] = set()  # client ids with stored state: a clean CONNECT skips the DELETEs otherwise

    @staticmethod
    def is_persistent(session: Session) -> bool:
        return session.clean_session is False and bool(session.client_id)

    def adopt(self, session: Session) -> None:
        """Give a persistent session durable containers (idempotent), before anything is re-sent to it."""
        if not self.is_persistent(session):
            return
        client_id = str(session.client_id)
        quota = _Counted(self.quotas, principal_of(client_id, session.username), client_id)
        if not isinstance(session.inflight_out, DurableInflight):
            self.quotas.release(client_id)  # new containers: whatever an earlier session object held is gone
            inflight = DurableInflight(self.db, client_id, quota)
            for packet_id, msg in session.inflight_out.items():
                inflight[packet_id] = msg
                if msg.released:
                    self.db.inflight_released(client_id, packet_id)
            session.inflight_out = inflight
        if not isinstance(session.inflight_in, DurableIncoming):
            incoming = DurableIncoming(self.db, client_id, quota)
            for packet_id, held in session.inflight_in.items():
                incoming[packet_id] = held
            session.inflight_in = incoming
        if not isinstance(session.retained_messages, DurableQueue):
            # Another layer may have swapped in its own queue on CONNECT; take its messages over.
            queue = DurableQueue(self.db, client_id, self.queue_limit, quota)
            while not session.retained_messages.empty():
                queue.put_nowait(session.retained_messages.get_nowait())
            session.retained_messages = queue

    def connected(self, session: Session) -> None:
        """An authenticated CONNECT: remember a persistent session, or drop a clean one's old state."""
        if not session.client_id:
            return
        if self.is_persistent(session):
            self.adopt(session)
            if isinstance(session.inflight_out, DurableInflight):
                dropped = session.inflight_out.drop_expired(time.time())
                if dropped:
                    log.info("%s resumed: %d expired in-flight messages not re-sent", session.client_id, dropped)
            self.db.touch(session.client_id, session.username, session.attributes.get(SESSION_EXPIRY))
            self._known.add(session.client_id)
        elif session.client_id in self._known:
            self._known.discard(session.client_id)
            self.db.forget(session.client_id)

    def disconnected(self, session: Session) -> None:
        """A connection ended: note when (its expiry counts from now), or forget a session that ends with it
        (an MQTT 5 client can set its Session Expiry to 0 at DISCONNECT)."""
        if not session.client_id:
            return
        if self.is_persistent(session):
            self.db.touch(session.client_id, session.username, session.attributes.get(SESSION_EXPIRY))
        elif session.client_id in self._known:
            self._known.discard(session.client_id)
            self.db.forget(session.client_id)

    async def restore(self, context: BrokerContext) -> tuple[int, int]:
        """Recreate stored sessions (offline) and retained messages; call before the listeners open."""
        expired = self.db.expire(time.time() - self.expiry_s)
        if expired:
            log.info("expired %d persistent sessions idle for more than %.0f s", expired, self.expiry_s)
        now = time.time()
        for topic, payload, qos, props in self.db.retained():
            if props is not None and props.expired(now):
                self.db.retain(topic, b"", qos)  # expired while the broker was down
                continue
            context.retained_messages[topic] = RetainedMessage(topic, payload, qos, props)
        stored = self.db.load()
        messages = 0
        for s in stored:
            self._known.add(s.client_id)
            await context.add_subscription(s.client_id, None, None)
            session: Session | None = context.get_session(s.client_id)  # ours: RoutingMixin.create_offline_session
            if session is None:
                continue
            session.clean_session = False
            session.username = s.username
            if s.expiry_s is not None:  # an MQTT 5 session: its own expiry, its subscription options
                session.attributes[SESSION_EXPIRY] = s.expiry_s
                session.attributes[PROTOCOL] = 5
                session.attributes[SUB_OPTIONS] = OptionsTable(dict(s.options))
            # amqtt expires an offline session `session_expiry_s` after its last disconnect; count from
            # when it was last seen, not from this restart (else every restart would extend its life).
            if s.last_seen and session.last_disconnect_time is not None:
                session.last_disconnect_time = min(int(s.last_seen), session.last_disconnect_time)
            self.adopt(session)
            inflight = session.inflight_out
            assert isinstance(inflight, DurableInflight)
            for packet_id, topic, payload, qos, released in s.inflight:
                inflight.restore(packet_id, _resend(packet_id, topic, payload, qos, released,
                                                    s.props.get(("inflight", packet_id))))
            held = session.inflight_in
            assert isinstance(held, DurableIncoming)
            for packet_id, topic, payload, retain in s.incoming:
                mp = s.props.get(("incoming", packet_id))
                held.restore(packet_id, IncomingMessage(packet_id, topic, payload, retain, mp))
            queue = session.retained_messages
            assert isinstance(queue, DurableQueue)
            for row_id, topic, payload, qos in s.queued:
                mp = s.props.get(("queue", row_id))
                queue.restore(row_id, RetainedMessage(topic, payload, qos, mp))
            messages += len(s.inflight) + len(s.queued) + len(s.incoming)
            for topic, qos in s.subscriptions:
                await context.add_subscription(s.client_id, topic, qos)
        log.info("restored %d persistent sessions with %d undelivered messages, %d retained topics",
                 len(stored), messages, len(context.retained_messages))
        return len(stored), messages

    def forget_expired(self, context: BrokerContext, now: float | None = None) -> int:
        """Drop the stored state of sessions amqtt has expired (idle past `expiry_s`, gone from memory).

        amqtt's session monitor forgets an offline session in memory once it is idle for `expiry_s`;
        without this its rows (and its id in `_known`) would stay until the next restart. A session
        still in memory is kept, whatever its age: it can be resumed, and its rows must be there.
        """
        cutoff = (time.time() if now is None else now) - self.expiry_s
        gone = [cid for cid in self.db.idle(cutoff, now) if context.get_session(cid) is None]
        for client_id in gone:
            self.db.forget(client_id)
            self._known.discard(client_id)
        if gone:
            log.info("forgot %d persistent sessions idle for more than %.0f s", len(gone), self.expiry_s)
        return len(gone)

    def freeze(self) -> None:
        """Stop writing: a clean shutdown empties the sessions' queues (amqtt's `_cleanup_session`), which must
        survive on disk (writes kept
        while sessions.db was locked are written first, if it can be now)."""
        self.db.settle()
        self.db.frozen = True

    def close(self) -> None:
        self.db.close()


def _resend(packet_id: int, topic: str, payload: bytes, qos: int, released: bool,
            props: MessageProps | None = None) -> OutgoingMessage:
    """A stored in-flight message; `released`: past PUBREC, so only its PUBREL is re-sent."""
    return OutgoingMessage(packet_id, topic, qos, payload, False, props, released=released)
