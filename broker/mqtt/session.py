"""The engine's MQTT session: what one client id holds across its connections, as a slots dataclass.

`Session` carries what the engine, our plugins and amqtt's remaining host code read: amqtt's `Broker` keeps it in
its session table and calls `clear_queues()` from `_delete_session` / `_cleanup_session`, plugin events get it as
`client_session=`, amqtt's auth and topic plugins read `username`, `password`, `client_id`, `is_anonymous`, its
`$SYS` plugin the `*_count` properties (`amqtt_compat.SESSION_API` lists them). Its state goes new -> connected
<-> disconnected as amqtt's did (`transitions` is the session itself, for code that says
`session.transitions.connect()`); an impossible transition raises `SessionStateError`, a `ValueError`.

- `inflight_out`: QoS 1/2 messages sent and not acknowledged, by packet id (a plain dict; `DurableInflight`
  for a persistent session, `session_persistence`); `inflight_in`: QoS 2 messages received and held until
  their PUBREL (`DurableIncoming` when persistent). Both start as `NO_INFLIGHT`, one shared empty dict that is
  never written (most connections never have a message in flight); the two writers, `send_publish` and
  `handle_qos2`, give the session its own dict first.
- `retained_messages` (amqtt's name): the offline queue, messages kept for a persistent session while it is
  disconnected; an `OfflineQueue` whose deque is made on first use (`DurableQueue` when persistent). It starts as
  `NO_QUEUE`, one shared queue that refuses items: a writer adds to `offline_queue()`, the session's own.
- No `delivered_message_queue` (amqtt's queue of received messages for its protocol handler): the engine handles
  each PUBLISH as it reads it, and amqtt's handler serves no connection.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from broker.mqtt.message import IncomingMessage, Message, OutgoingMessage

__all__ = ["NO_INFLIGHT", "NO_QUEUE", "OfflineQueue", "Session", "SessionStateError"]

log = logging.getLogger("intercom.sessions")


# What `inflight_out` and `inflight_in` start as (see the module docstring): reading, `pop` and `clear` are safe on
# it; a writer replaces it first (`if held is NO_INFLIGHT: held = session.inflight_in = {}`).
NO_INFLIGHT: dict[int, Any] = {}


def _no_inflight() -> dict[int, Any]:
    return NO_INFLIGHT


class SessionStateError(ValueError):
    """A transition the session's state does not allow (connect while connected)."""


class OfflineQueue:
    """A session's offline queue (FIFO, `asyncio.Queue`'s non-blocking names); the deque exists once used."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[Message] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items is not None else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Message) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)

    def get_nowait(self) -> Message:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()


class _NoQueue(OfflineQueue):
    """`NO_QUEUE`'s class: empty for good (reading, `get_nowait` and `empty` behave as on any empty queue)."""

    __slots__ = ()

    def put_nowait(self, item: Message) -> None:
        raise RuntimeError("NO_QUEUE is shared by every session: add to Session.offline_queue()")


NO_QUEUE: OfflineQueue = _NoQueue()


def _no_queue() -> OfflineQueue:
    return NO_QUEUE


@dataclass(slots=True, eq=False)
class Session:
    """One client id's session (see the module docstring). Equality is identity: two session objects for one
    client id (a takeover, a clean start) are different sessions."""

    client_id: str | None = None
    clean_session: bool | None = None  # the engine's "ends with the connection" (MQTT 5: Session Expiry 0)
    username: str | None = None
    password: str | None = None
    remote_address: str | None = None
    remote_port: int | None = None
    keep_alive: int = 0
    will_flag: bool = False
    will_topic: str | None = None
    will_message: bytes | bytearray | None = None
    will_qos: int | None = None
    will_retain: bool | None = None
    ssl_object: ssl.SSLObject | None = None
    parent: int = 0  # 1: a resumed session (amqtt's name)
    is_anonymous: bool = False
    state: str = "new"
    last_connect_time: int | None = None
    last_disconnect_time: float | None = None  # the engine stores time.time(): session expiry needs sub-second
    # application and plugin attributes, namespaced keys (`hooks.PRINCIPAL`, ...)
    attributes: dict[str, Any] = field(default_factory=dict)
    inflight_out: dict[int, OutgoingMessage] = field(default_factory=_no_inflight)
    inflight_in: dict[int, IncomingMessage] = field(default_factory=_no_inflight)
    retained_messages: OfflineQueue = field(default_factory=_no_queue)
    last_packet_id: int = 0

    # ---- state: amqtt's transitions table (connect from new or disconnected; disconnect from any) ----

    @property
    def transitions(self) -> Session:
        return self

    def connect(self) -> bool:
        if self.state == "connected":
            raise SessionStateError(f"Can't trigger event connect from state {self.state}!")
        self.state = "connected"
        self.last_connect_time = math.floor(time.time())
        self.last_disconnect_time = None
        return True

    def disconnect(self) -> bool:
        self.state = "disconnected"
        self.last_disconnect_time = math.floor(time.time())
        return True

    def is_new(self) -> bool:
        return self.state == "new"

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"

    # ---- what amqtt's host code and plugins call ----

    @property
    def next_packet_id(self) -> int:
        """The next packet id not in flight either way (1..65535, wrapping)."""
        packet_id = start = self.last_packet_id % 65535 + 1
        while packet_id in self.inflight_in or packet_id in self.inflight_out:
            packet_id = packet_id % 65535 + 1
            if packet_id == start:
                raise RuntimeError("More than 65535 messages pending. No free packet ID")
        self.last_packet_id = packet_id
        return packet_id

    @property
    def inflight_in_count(self) -> int:
        return len(self.inflight_in)

    @property
    def inflight_out_count(self) -> int:
        return len(self.inflight_out)

    @property
    def retained_messages_count(self) -> int:
        return self.retained_messages.qsize()

    def offline_queue(self) -> OfflineQueue:
        """The queue to add an offline message to: the session's own, made on first use."""
        queue = self.retained_messages
        if queue is NO_QUEUE:
            queue = self.retained_messages = OfflineQueue()
        return queue

    def clear_queues(self) -> None:
        """The session is deleted (amqtt's `_delete_session` / `_cleanup_session`): empty its offline queue."""
        queue = self.retained_messages
        while not queue.empty():
            queue.get_nowait()

    def __repr__(self) -> str:
        return f"Session(clientId={self.client_id}, state={self.state})"
