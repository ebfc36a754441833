"""amqtt 0.12.1's BrokerProtocolHandler with the fast path bound in as methods, and its packet reader.

The fast path is bound in as methods (no per-connection closures): the handler carries one reference
to the broker (`routed`), set once the connection is registered, and falls back to amqtt's behaviour
while it is None. It allocates its two events lazily and arms no keepalive write timer: amqtt's
`handle_write_timeout` is a no-op on the broker side (the reader enforces keepalive), so the timer
amqtt re-arms on every packet sent would only cost.

Its reader loop (for readers that hand out whole packets) replaces amqtt's `_reader_loop`: PUBLISH,
PUBACK and PUBREL are decoded from the bytes and handled in place, without amqtt's `wait_for` and
task per packet; every other packet goes through amqtt's own classes and `handle_*` coroutines.
It yields to the event loop every few milliseconds of work (`fairness.Turn`), so a client pipelining
packets cannot hold the loop. Incoming QoS 2 is the broker's (`handle_qos2.Qos2Mixin.hold_qos2` / `pubrel`),
handled in order in this loop, so a client's unreleased QoS 2 messages are bounded by its window, not by
how fast it can send.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from amqtt.adapters import BufferReader
from amqtt.contexts import Action
from amqtt.errors import MQTTError, NoDataError, ProtocolHandlerError
from amqtt.events import MQTTEvents
from amqtt.mqtt import packet_class
from amqtt.mqtt.constants import QOS_2
from amqtt.mqtt.packet import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler, UnSubscription
from amqtt.mqtt.protocol.broker_handler import Subscription as PendingSubscription
from amqtt.mqtt.protocol.handler import ProtocolHandler
from amqtt.session import Session

from broker.limiter import LogThrottle
from broker.mqtt import codec
from broker.mqtt.codec import V311, Subscribe, Subscription
from broker.mqtt.fairness import Turn
from broker.mqtt.lazy import LazyEvent, LazyQueue
from broker.mqtt.reason import ProtocolError, wrong_ack

__all__ = ["FastHandler", "whole_packets"]

log = logging.getLogger("intercom.fastpath")
_quiet = LogThrottle()

_ACKS = frozenset({PUBACK, PUBREC, PUBCOMP})  # a receiver's acknowledgements, checked against the flow
_HANDLERS = {SUBSCRIBE: "handle_subscribe", UNSUBSCRIBE: "handle_unsubscribe", PUBACK: "handle_puback",
             PUBREC: "handle_pubrec", PUBREL: "handle_pubrel", PUBCOMP: "handle_pubcomp", PINGREQ: "handle_pingreq",
             PINGRESP: "handle_pingresp", PUBLISH: "handle_publish", DISCONNECT: "handle_disconnect"}


async def _done() -> None:
    """The task amqtt's reader creates for a packet already handled synchronously."""


def whole_packets(reader: Any) -> bool:
    """True for readers that hand out whole packets (`take_packet` / `read_packet`, as the hardening
    layer's GuardedReader does), so no read ever waits in the middle of one."""
    return callable(getattr(reader, "read_packet", None)) and callable(getattr(reader, "take_packet", None))


class FastHandler(BrokerProtocolHandler):
    version = V311  # the protocol the packet handlers answer in (`handle_subscribe.Connection`)

    # BrokerProtocolHandler.__init__'s attributes, set here instead of calling it: its two pending-(un)subscription
    # queues are only used while `routed` is None, so they are LazyQueues (tests/mqtt/test_amqtt_compat.py checks
    # that the handler still gets every attribute amqtt's constructor sets)
    def __init__(self, plugins_manager: Any, session: Session | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        ProtocolHandler.__init__(self, plugins_manager, session, loop)
        self._disconnect_waiter: asyncio.Future[Any] | None = None
        self._pending_subscriptions: asyncio.Queue[PendingSubscription] = LazyQueue()
        self._pending_unsubscriptions: asyncio.Queue[UnSubscription] = LazyQueue()
        self._reader_stopped = LazyEvent()
        self.fast_reader: Any = None  # the broker, once it reads whole packets for this connection
        self.routed: Any = None  # the broker, once it handles this connection's packets in place

    def write(self, data: bytes) -> None:
        """Write bytes on this connection (`handle_subscribe.Connection`)."""
        writer = self.writer
        if writer is not None:
            writer.write(data)

    async def start(self) -> None:
        """`ProtocolHandler.start` + `BrokerProtocolHandler.start`, without the keepalive write timer."""
        if not self._is_attached():
            raise ProtocolHandlerError("Handler is not attached to a stream")
        self._reader_ready = LazyEvent()
        self._reader_stopped = LazyEvent()
        self._reader_task = asyncio.create_task(self._reader_loop())
        await asyncio.sleep(0)  # let the reader start (amqtt awaited `_reader_ready`, allocating its waiters)
        await self._retry_deliveries()
        waiter: asyncio.Future[Any] | None = self._disconnect_waiter
        if waiter is None or waiter.done():
            self._disconnect_waiter = asyncio.get_running_loop().create_future()

    def _reader_loop(self) -> Any:
        broker = self.fast_reader
        if broker is None:
            return super()._reader_loop()
        return self._read_whole_packets(broker)

    async def _read_whole_packets(self, broker: Any) -> None:
        """amqtt's `ProtocolHandler._reader_loop` minus a task and a `wait_for` per packet. There is no
        read timeout: amqtt's broker handler ignored it and the reader enforces keepalive itself."""
        session: Any = self.session
        reader: Any = self.reader
        if self._reader_ready is not None:
            self._reader_ready.set()
        running: list[asyncio.Task[None]] = []  # amqtt-path packets in progress; rarely more than one
        hooks = broker._plugin_hooks()
        inline_ok = str(MQTTEvents.PACKET_RECEIVED) not in hooks.events  # else every packet is an event
        fast_ok = hooks.sync_publish and inline_ok
        turn = Turn()  # a pipelining client yields the loop to the others every few ms
        try:
            while True:
                if turn.over():
                    await turn.yield_now()
                if running:
                    running = [task for task in running if not task.done()]
                # a packet already in the buffer costs no coroutine
                packet = reader.take_packet() or await reader.read_packet()
                if packet is None:
                    break
                first, body = packet
                kind, flags = first >> 4, first & 0x0F
                if fast_ok and kind == PUBLISH and (flags >> 1) & 3 < QOS_2:
                    self._publish_bytes(broker, flags, body)
                    continue
                if kind in _ACKS and len(body) == 2:
                    packet_id = int.from_bytes(body, "big")
                    if (wrong := wrong_ack(session.inflight_out, kind, packet_id, self._pubcomp_waiters)) is not None:
                        raise wrong
                    if fast_ok and kind == PUBACK:
                        broker._acked(session, self, packet_id, None)
                        continue
                if inline_ok and kind == PUBLISH and (flags >> 1) & 3 == QOS_2:
                    await self._qos2_bytes(broker, flags, body)
                    continue
                if inline_ok and kind == SUBSCRIBE:
                    await broker.subscribe(self, codec.decode_subscribe(body, V311))
                    continue
                if inline_ok and kind == UNSUBSCRIBE:
                    packet_id, filters, _ = codec.decode_unsubscribe(body, V311)
                    await broker.unsubscribe(self, packet_id, filters)
                    continue
                if inline_ok and kind == PUBREL and len(body) == 2:
                    pending = broker.pubrel(self, int.from_bytes(body, "big"))
                    if pending is not None:
                        await pending
                    continue
                task = await self._dispatch(first, body)
                if task is not None:
                    running.append(task)
        except asyncio.CancelledError:
            pass
        except ProtocolError as exc:  # the one place a 3.1.1 protocol error becomes a close
            _quiet.log(log, logging.WARNING, f"protocol {session.remote_address}",
                       "closing MQTT connection of %r: %s", session.client_id, exc)
        except (MQTTError, NoDataError, IndexError, ValueError) as exc:
            log.debug("%s: reader stopped: %r", session.client_id, exc)
        except Exception as exc:
            log.warning("%s: unhandled exception in reader: %r", session.client_id, exc)
        for task in running:
            task.cancel()
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()

    async def _dispatch(self, first: int, body: bytes) -> asyncio.Task[None] | None:
        """One non-fast packet, rebuilt with amqtt's classes and handed to its `handle_*`, like amqtt."""
        fixed = MQTTFixedHeader(first >> 4, first & 0x0F, len(body))
        packet: Any = await packet_class(fixed).from_stream(BufferReader(body), fixed_header=fixed)
        await self.plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=packet, session=self.session)
        name = _HANDLERS.get(fixed.packet_type)
        if name is None:
            if fixed.packet_type == CONNECT:
                await self.handle_connect(packet)
            return None
        return asyncio.create_task(getattr(self, name)(packet))

    def _publish_bytes(self, broker: Any, flags: int, body: bytes) -> None:
        """A PUBLISH decoded by hand (MQTT 3.1.1 §3.3); the rest is the broker's `_accept_now`."""
        qos = (flags >> 1) & 3
        tlen = int.from_bytes(body[:2], "big")
        try:
            topic = body[2:2 + tlen].decode()
        except UnicodeDecodeError:
            broker._spawn(self.handle_connection_closed())
            return
        pos = 2 + tlen
        packet_id = int.from_bytes(body[pos:pos + 2], "big") if qos else 0
        data = body[pos + 2:] if qos else body[pos:]
        if broker._accept_now(self.session, self, topic, data, qos, bool(flags & 1)) and qos:
            broker.puback(self, packet_id)

    async def _qos2_bytes(self, broker: Any, flags: int, body: bytes) -> None:
        """A QoS 2 PUBLISH, decoded by the codec and held by the broker (`handle_qos2`)."""
        pub = codec.decode_publish(flags, body, V311)
        allowed = broker.may_publish_now(self.session, pub.topic)
        if allowed is None:
            allowed = await broker._allowed(self.session, pub.topic, Action.PUBLISH)
        broker.hold_qos2(self, pub.packet_id, pub.topic, pub.payload, pub.retain, bool(allowed))

    async def _retry_deliveries(self) -> None:
        """amqtt's [MQTT-4.4.0-1] re-send of unacknowledged outgoing messages. It leaves incoming QoS 2
        messages alone: they wait for the client's PUBREL (amqtt's version re-runs their receive flow,
        which would route them without one)."""
        session: Any = self.session
        retries = [asyncio.create_task(asyncio.wait_for(self._handle_message_flow(msg), 10))
                   for msg in session.inflight_out.values()]
        if retries:
            await asyncio.wait(retries)

    # amqtt's reader runs what these return as a task; the broker's versions return a finished coroutine
    # when they did the work in place.
    def handle_publish(self, packet: Any) -> Any:
        broker = self.routed
        if broker is None:
            return super().handle_publish(packet)
        return broker._publish_now(self.session, self, packet)

    def handle_puback(self, packet: Any) -> Any:
        broker = self.routed
        if broker is None:
            return super().handle_puback(packet)
        return broker._puback_now(self.session, self, packet)

    def handle_pubrel(self, packet: Any) -> Any:
        broker = self.routed
        if broker is None:
            return super().handle_pubrel(packet)
        return broker.pubrel(self, packet.packet_id) or _done()

    def handle_subscribe(self, packet: Any) -> Any:
        broker = self.routed
        if broker is None:
            return super().handle_subscribe(packet)
        subs = [Subscription(topic_filter, qos, False, False, 0) for topic_filter, qos in packet.payload.topics]
        return broker.subscribe(self, Subscribe(packet.variable_header.packet_id, subs, None, {}))

    def handle_unsubscribe(self, packet: Any) -> Any:
        broker = self.routed
        if broker is None:
            return super().handle_unsubscribe(packet)
        return broker.unsubscribe(self, packet.variable_header.packet_id, list(packet.payload.topics))
