"""One connection's outgoing side: coalesced writes, a QoS 1 in-flight window and a bounded backlog.

Every PUBLISH the broker sends a subscriber goes through `Outlet.send`, synchronously: no task and no
future per message. Bytes written in one loop iteration leave in one `transport.write`. When the peer
reads too slowly (socket buffer above `write_buffer_bytes`) or has `max_inflight` QoS 1 messages
unacknowledged, messages wait in a backlog of at most `max_queued` messages and `max_queued_bytes` payload
bytes; past either the oldest QoS 0 messages are dropped, and when only QoS 1 is left the connection is
closed with a warning. A backlog that stays at its bound for `max_full_s` (a subscriber that stopped
reading) closes the connection too, instead of shedding forever. A persistent session's QoS>0 messages
also wait while its principal's unacknowledged bytes pass `limits.max_inflight_bytes_per_principal`
(`DurableInflight.fits`), unless the session has nothing in flight (so its own PUBACK always resumes it).

The retained messages a new subscription matches enter the backlog as one `RetainedBatch` entry: they
go out in order under the same window and socket limits, the batch counting as one entry, so a
subscription matching more retained topics than `max_queued` is served, not taken for a slow reader.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from broker.mqtt.message import MessageProps, RetainedMessage, props_of
from broker.mqtt.session import Session
from broker.mqtt.session_persistence import DurableInflight

__all__ = ["CoalescingWriter", "DeliveryLimits", "Outlet", "RetainedBatch", "Wire", "WriteBatch", "write_batch"]

log = logging.getLogger("intercom.delivery")
# encoded topic, topic, payload, QoS, retain, MQTT 5 properties, subscription identifiers
_Queued = tuple[bytes, str, bytes, int, bool, MessageProps | None, tuple[int, ...]]


@dataclass(frozen=True)
class DeliveryLimits:
    """Per-connection bounds; `broker.yaml`'s `delivery:` section fills them."""

    max_inflight: int = 100
    max_queued: int = 10_000
    write_buffer_bytes: int = 256 * 1024
    max_queued_bytes: int = 8 * 1024 * 1024
    max_full_s: float = 5.0


class Wire(Protocol):
    """The socket side a `CoalescingWriter` writes to (`protocol.MqttProtocol`)."""

    transport: asyncio.Transport | None

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class WriteBatch:
    """The writers of one event loop with bytes waiting: flushed together at the end of the loop iteration, or
    earlier by a connection that has handled what it received (`protocol.MqttProtocol`), so an answer leaves in
    the callback that caused it."""

    __slots__ = ("_loop", "_scheduled", "_writers", "held")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._writers: list[CoalescingWriter] = []
        self._scheduled = False
        self.held = False  # a connection is handling what it received and flushes when it is done

    def add(self, writer: CoalescingWriter) -> None:
        self._writers.append(writer)
        if not self._scheduled and not self.held:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        writers = self._writers
        if writers:
            self._writers = []
            for writer in writers:
                writer.flush()


_BATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBatch] = weakref.WeakKeyDictionary()


def write_batch(loop: asyncio.AbstractEventLoop) -> WriteBatch:
    batch = _BATCHES.get(loop)
    if batch is None:
        batch = _BATCHES[loop] = WriteBatch(loop)
    return batch


class CoalescingWriter:
    """Writes made in one loop iteration are joined into one transport write."""

    __slots__ = ("_batch", "_buf", "_pending", "inner")

    def __init__(self, inner: Wire, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = inner
        self._batch = write_batch(loop)
        self._buf: list[bytes] | None = None  # written this iteration, flushed at its end (None: nothing)
        self._pending = 0

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.inner.transport

    def write(self, data: bytes | bytearray) -> None:
        buf = self._buf
        if buf is None:
            self._buf = [bytes(data)]
            self._batch.add(self)
        else:
            buf.append(bytes(data))
        self._pending += len(data)

    def buffered(self) -> int:
        """Bytes not yet accepted by the peer: ours plus the transport's."""
        size = self._pending
        transport = self.inner.transport
        if transport is not None:
            size += transport.get_write_buffer_size()
        return size

    def flush(self) -> None:
        buf = self._buf
        if buf is None:
            return
        self._buf = None
        self._pending = 0
        self.inner.write(buf[0] if len(buf) == 1 else b"".join(buf))  # dropped if the peer is gone (or cut off)

    async def drain(self) -> None:
        self.flush()
        await self.inner.drain()


class RetainedBatch:
    """The retained messages one subscription matched (a snapshot of references), sent one at a time
    at min(granted QoS, the message's QoS) with the retain flag [MQTT-3.3.1-6] (and, for MQTT 5, the
    subscription's identifier)."""

    __slots__ = ("messages", "pos", "qos", "sub_ids")

    def __init__(self, messages: list[RetainedMessage], qos: int, sub_ids: tuple[int, ...] = ()) -> None:
        self.messages = messages
        self.pos = 0
        self.qos = qos
        self.sub_ids = sub_ids

    def peek(self) -> _Queued | None:
        """The next message as a backlog entry, or None when the batch is done."""
        if self.pos >= len(self.messages):
            return None
        msg = self.messages[self.pos]
        qos = self.qos if msg.qos is None else min(self.qos, msg.qos)
        return msg.topic.encode(), msg.topic, bytes(msg.data), qos, True, props_of(msg), self.sub_ids


class Outlet:
    """The outgoing path of one connected session."""

    __slots__ = ("_full_timer", "_pump", "backlog", "closed", "dropped", "full_since", "handler", "limits",
                 "on_overflow", "queued_bytes", "session", "writer")

    def __init__(self, session: Session, handler: Any, writer: CoalescingWriter, limits: DeliveryLimits,
                 on_overflow: Callable[[Outlet], None]) -> None:
        self.session = session
        self.handler = handler
        self.writer = writer
        self.limits = limits
        self.on_overflow = on_overflow
        # most connections never queue: the deque (~600 B) is made on first use
        self.backlog: deque[_Queued | RetainedBatch] | tuple[()] = ()
        self.closed = False
        self.dropped = 0
        self.queued_bytes = 0  # payload bytes in the backlog (retained batches are shared references: 0)
        self.full_since = 0.0  # monotonic time the backlog reached its bound; 0 while it is below
        self._pump: asyncio.Task[None] | None = None
        self._full_timer: asyncio.TimerHandle | None = None

    def send(self, topic_b: bytes, topic: str, data: bytes, qos: int, retain: bool = False,
             props: MessageProps | None = None, sub_ids: tuple[int, ...] = ()) -> None:
        """Write one PUBLISH now, or queue it when the peer is slow or the QoS 1 window is full."""
        if self.closed:
            return
        if not self.backlog and self._room(qos, len(data)):
            self._write(topic_b, topic, data, qos, retain, props, sub_ids)
            return
        backlog = self._queue()
        backlog.append((topic_b, topic, data, qos, retain, props, sub_ids))
        self.queued_bytes += len(data)
        if len(backlog) > self.limits.max_queued or self.queued_bytes > self.limits.max_queued_bytes:
            self._shed()
        if not self.closed:
            self._wait_for_room()

    def send_retained(self, messages: list[RetainedMessage], qos: int,
                      sub_ids: tuple[int, ...] = ()) -> None:
        """Send the retained messages a new subscription (granted `qos`) matches, under flow control."""
        if self.closed or not messages:
            return
        self._queue().append(RetainedBatch(messages, qos, sub_ids))
        self.pump()
        if self.backlog:
            self._wait_for_room()

    def _room(self, qos: int, size: int = 0) -> bool:
        if qos and self._window_shut(size):
            return False
        return self.writer.buffered() < self.limits.write_buffer_bytes

    def _window_shut(self, size: int) -> bool:
        """No QoS>0 message of `size` bytes may go now: the window is full, or (with something in flight, whose
        PUBACK will resume the backlog) the principal's in-flight bytes would pass their quota."""
        inflight = self.session.inflight_out
        if len(inflight) >= self.limits.max_inflight:
            return True
        return bool(inflight) and isinstance(inflight, DurableInflight) and not inflight.fits(size)

    def _write(self, topic_b: bytes, topic: str, data: bytes, qos: int, retain: bool,
               props: MessageProps | None = None, sub_ids: tuple[int, ...] = ()) -> None:
        """Encode and write one PUBLISH in the connection's version (`send_publish.PublishOutlet`)."""
        raise NotImplementedError

    def acked(self, packet_id: int) -> None:
        """The client acknowledged `packet_id` (PUBACK; PUBCOMP or a refusing PUBREC for QoS 2): forget the message
        (a persistent session's on disk too), free the slot and move the backlog."""
        self.session.inflight_out.pop(packet_id, None)
        if self.backlog:
            self.pump()
            if self.backlog and not self._window_waits():  # the socket, not the window, holds it: wait to drain
                self._wait_for_room()

    def pump(self) -> None:
        """Send queued messages while there is room."""
        if not self.backlog:
            return
        backlog = self._queue()
        while backlog and not self.closed:
            head = backlog[0]
            if isinstance(head, RetainedBatch):
                item = head.peek()
                if item is None:
                    backlog.popleft()
                    continue
                if not self._room(item[3], len(item[2])):
                    return
                head.pos += 1
            else:
                item = head
                if not self._room(item[3], len(item[2])):
                    return
                backlog.popleft()
                self.queued_bytes -= len(item[2])
            self._write(*item)
        if self.full_since and self._below_half():
            self.full_since = 0.0

    def _below_half(self) -> bool:
        limits = self.limits
        return len(self.backlog) <= limits.max_queued // 2 and self.queued_bytes <= limits.max_queued_bytes // 2

    def _wait_for_room(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._drain_then_pump())

    async def _drain_then_pump(self) -> None:
        """Wait for the socket to drain, then send; a full QoS 1 window is resumed by `acked` instead."""
        for _ in range(1_000_000):
            self.pump()
            if self.closed or not self.backlog:
                return
            if self._window_waits():
                return
            try:
                await self.writer.drain()
            except (OSError, RuntimeError):
                return
            if self.writer.buffered() >= self.limits.write_buffer_bytes:
                await asyncio.sleep(0.01)

    def _window_waits(self) -> bool:
        """Whether the next message the backlog would send waits for a PUBACK (not for the socket)."""
        if not self.backlog:
            return False
        head = self.backlog[0]
        item = head.peek() if isinstance(head, RetainedBatch) else head
        return item is not None and bool(item[3]) and self._window_shut(len(item[2]))

    def _queue(self) -> deque[_Queued | RetainedBatch]:
        if not isinstance(self.backlog, deque):
            self.backlog = deque()
        return self.backlog

    def _shed(self) -> None:
        """The backlog passed a bound: drop the oldest QoS 0 messages until it is within both again, or close
        the connection when only QoS 1 is left or the backlog has been at its bound for `max_full_s`."""
        if self._stuck():
            return
        limits = self.limits
        if not self.full_since:
            self.full_since = time.monotonic()
            if self._full_timer is None:
                self._full_timer = asyncio.get_running_loop().call_later(limits.max_full_s, self._check_full)
        backlog = self._queue()
        i = 0
        while len(backlog) > limits.max_queued or self.queued_bytes > limits.max_queued_bytes:
            while i < len(backlog) and (isinstance(backlog[i], RetainedBatch) or backlog[i][3]):  # type: ignore[index]
                i += 1
            if i == len(backlog):
                self._cut(f"{len(backlog)} QoS 1 messages ({self.queued_bytes} bytes) queued for a slow reader")
                return
            item = backlog[i]
            assert not isinstance(item, RetainedBatch)
            del backlog[i]
            self.queued_bytes -= len(item[2])
            self.dropped += 1

    def _check_full(self) -> None:
        """The `max_full_s` timer: close a backlog still full; a backlog that drained and filled again meanwhile
        gets the rest of its own time."""
        self._full_timer = None
        if self.closed or not self.full_since or self._stuck():
            return
        left = self.full_since + self.limits.max_full_s - time.monotonic()
        self._full_timer = asyncio.get_running_loop().call_later(max(left, 0.01), self._check_full)

    def _stuck(self) -> bool:
        """Close the connection if its backlog has been at its bound for `max_full_s`; True if it did."""
        if self.full_since and time.monotonic() - self.full_since > self.limits.max_full_s:
            self._cut(f"its backlog stayed full for {self.limits.max_full_s:.0f} s ({self.dropped} messages dropped)")
            return True
        return False

    def _cut(self, why: str) -> None:
        self.closed = True
        log.warning("disconnecting %s: %s (delivery.max_queued=%d, delivery.max_queued_bytes=%d)",
                    self.session.client_id, why, self.limits.max_queued, self.limits.max_queued_bytes)
        self.backlog = ()
        self.queued_bytes = 0
        self._stop_timer()
        self.on_overflow(self)

    def _stop_timer(self) -> None:
        if self._full_timer is not None:
            self._full_timer.cancel()
            self._full_timer = None

    def close(self) -> None:
        """The connection ended. A persistent session keeps the QoS>0 messages it was still owed
        [MQTT-3.1.2-4]: they move to its offline queue (sqlite-backed) and go out when it returns.
        Retained batches are not kept: the next connection gets its subscriptions' retained messages anew."""
        self.closed = True
        backlog, self.backlog = self.backlog, ()
        self.queued_bytes = 0
        self._stop_timer()
        session = self.session
        if backlog and not session.clean_session:
            for item in backlog:
                if isinstance(item, RetainedBatch):
                    continue
                _topic_b, topic, data, qos, _retain, props, _ids = item
                if qos:
                    session.offline_queue().put_nowait(RetainedMessage(topic, data, qos, props))
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
