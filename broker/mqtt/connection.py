"""One MQTT 5 network connection: reads its packets, decodes them strictly, hands them to the broker.

`Connection` stands where amqtt's protocol handler stands for a 3.1.1 client: it is the handler in the
broker's session table (`_sessions[client_id] = (session, connection)`), so takeover, shutdown and
routing reach v5 and 3.1.1 connections alike; its outlet (`make_outlet`) writes v5 PUBLISH packets.
Packets arrive framed and size-checked by the packet guard; each is decoded by `codec` before any of it
is used, and a violation ends the connection with a DISCONNECT carrying the reason code, then a close
[MQTT-4.13.1-1]. Topic Aliases the client sets live here, per connection [MQTT-3.3.2-7].
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from broker.limiter import LogThrottle
from broker.mqtt import codec, encode
from broker.mqtt.codec import (
    AUTH,
    DISCONNECT,
    PINGREQ,
    PROTOCOL_ERROR,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    TOPIC_ALIAS,
    TOPIC_ALIAS_INVALID,
    UNSUBSCRIBE,
    V5,
    V311,
    Disconnect,
    Publish,
    V5Error,
)
from broker.mqtt.fairness import Turn
from broker.mqtt.outlet import CoalescingWriter, DeliveryLimits, Outlet
from broker.mqtt.packet_guard import GuardedReader
from broker.mqtt.reason import ProtocolError, Reason, wrong_ack
from broker.mqtt.send_publish import Link, PublishOutlet
from broker.mqtt.session import Session

__all__ = ["Connection"]

log = logging.getLogger("intercom.mqtt5")
_quiet = LogThrottle(1.0)
_LINGER_S = 1.0


class Connection:
    """The handler of one v5 network connection (see the module docstring)."""


    def __init__(self, broker: Any, session: Session, reader: GuardedReader, writer: Any, link: Link,
                 alias_max: int) -> None:
        self.broker = broker
        self.session = session
        self.reader = reader
        self.writer = writer  # the engine wraps it in a CoalescingWriter when it opens the outlet
        self.link = link
        self.version = link.version  # the protocol the packet handlers answer in (`handle_subscribe.Peer`)
        self.alias_max = alias_max  # the Topic Alias Maximum the broker announced
        self.aliases: dict[int, str] = {}
        self.closed = False
        self.outlet: PublishOutlet | None = None
        self._reader_task: asyncio.Task[Any] | None = None

    # -- the engine's handler surface ---------------------------------------------------------------

    def make_outlet(self, session: Session, writer: CoalescingWriter, limits: DeliveryLimits,
                    on_overflow: Callable[[Outlet], None]) -> Outlet:
        self.outlet = PublishOutlet(session, self, writer, limits, on_overflow, self.link)
        return self.outlet

    async def handle_connection_closed(self) -> None:
        """Another connection took this client id over [MQTT-3.1.4-3]."""
        await self.disconnect(Reason.SESSION_TAKEN_OVER)

    async def stop(self) -> None:
        """The broker is shutting down."""
        await self.disconnect(Reason.SERVER_SHUTTING_DOWN)

    # -- writing -----------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    async def disconnect(self, reason: int, linger: bool = False) -> None:
        """Send DISCONNECT with `reason` (§4.13), flush, and stop reading: the connection then ends.

        `linger`: the client may still be sending (it has not seen the DISCONNECT yet); half-close and read
        and drop what comes for up to `_LINGER_S`, so the client reads the DISCONNECT instead of a reset."""
        if self.closed:
            return
        self.closed = True
        if self.version == V311:  # no server DISCONNECT in 3.1.1: the connection just closes
            self.reader.close()
            return
        self.writer.write(encode.encode_disconnect(reason))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.drain(), 1.0)
        if linger:
            transport = getattr(self.writer, "transport", None)
            with contextlib.suppress(Exception):
                if transport is not None and transport.can_write_eof():
                    transport.write_eof()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_LINGER_S):
                    while await self.reader.read_packet() is not None:
                        pass
        self.reader.close()

    # -- reading -----------------------------------------------------------------------------------

    async def run(self) -> Disconnect | None:
        """Read and handle packets until the connection ends; the client's DISCONNECT, if it sent one."""
        reader = self.reader
        broker = self.broker
        version = self.version
        turn = Turn()  # a pipelining client yields the loop to the others every few ms
        # every ACL answers without awaiting and no plugin listens to message events: the hand-decoded PUBLISH
        fast = broker._plugin_hooks().sync_publish
        try:
            while not self.closed:
                if turn.over():
                    await turn.yield_now()
                packet = reader.take_packet() or await reader.read_packet()
                if packet is None:
                    if reader.code is not None:
                        await self.disconnect(reader.code)
                    return None
                first, body = packet
                kind = first >> 4
                if kind == PUBLISH:
                    if fast and broker.publish_plain(self, first & 0x0F, body, version):
                        continue
                    pending = broker.publish_packet(self, self.decode_publish(first & 0x0F, body, version))
                    if pending is not None:
                        await pending
                elif kind == PUBACK:
                    # the short form (both versions' usual one) is a non-zero packet id: no decoder needed
                    packet_id = int.from_bytes(body, "big") if len(body) == 2 else 0
                    if not packet_id:
                        packet_id = codec.decode_ack(PUBACK, body, version).packet_id
                    if (wrong := wrong_ack(self.session.inflight_out, PUBACK, packet_id)) is not None:
                        raise wrong
                    self.acked(packet_id)
                elif kind == PUBREC:
                    ack = codec.decode_ack(PUBREC, body, version)
                    if (wrong := wrong_ack(self.session.inflight_out, PUBREC, ack.packet_id)) is not None:
                        raise wrong
                    if self.outlet is not None:
                        self.outlet.pubrec(ack.packet_id, ack.reason)
                elif kind == PUBREL:
                    pending = broker.pubrel(self, codec.decode_ack(PUBREL, body, version).packet_id)
                    if pending is not None:
                        await pending
                elif kind == PUBCOMP:
                    packet_id = codec.decode_ack(PUBCOMP, body, version).packet_id
                    if (wrong := wrong_ack(self.session.inflight_out, PUBCOMP, packet_id)) is not None:
                        raise wrong
                    if self.outlet is not None:
                        self.outlet.pubcomp(packet_id)
                    else:
                        self.session.inflight_out.pop(packet_id, None)
                elif kind == SUBSCRIBE:
                    await broker.subscribe(self, codec.decode_subscribe(body, version))
                elif kind == UNSUBSCRIBE:
                    packet_id, filters, _ = codec.decode_unsubscribe(body, version)
                    await broker.unsubscribe(self, packet_id, filters)
                elif kind == PINGREQ:
                    self.write(b"\xd0\x00")
                elif kind == DISCONNECT:
                    return codec.decode_disconnect(body, version)
                elif kind == AUTH:
                    # no Authentication Method was accepted at CONNECT: an AUTH is a Protocol Error (MQTT 5.0 §4.12)
                    raise V5Error(PROTOCOL_ERROR, "AUTH packet without enhanced authentication")
        except ProtocolError as exc:  # the one place a v5 protocol error becomes DISCONNECT + close
            _quiet.log(log, logging.WARNING, self.session.remote_address or "?",
                       "closing MQTT %s connection of %r: %s (reason %#04x)", "5" if version == V5 else "3.1.1",
                       self.session.client_id, exc, exc.code)
            await self.disconnect(exc.code, linger=True)
        return None

    def decode_publish(self, flags: int, body: bytes, version: int = V5) -> Publish:
        """Decode a PUBLISH and resolve its Topic Alias (§3.3.2.3.4)."""
        pub = codec.decode_publish(flags, body, version)
        alias = pub.props.get(TOPIC_ALIAS)
        if alias is not None:
            if alias > self.alias_max:
                raise V5Error(TOPIC_ALIAS_INVALID, f"Topic Alias {alias} above the maximum {self.alias_max}")
            if pub.topic:
                self.aliases[alias] = pub.topic
            else:
                topic = self.aliases.get(alias)
                if topic is None:
                    raise V5Error(PROTOCOL_ERROR, f"Topic Alias {alias} was never set")  # (MQTT 5.0 §3.3.2.3.4)
                pub.topic = topic
        elif not pub.topic:
            raise V5Error(PROTOCOL_ERROR, "empty topic without a Topic Alias")
        return pub

    def acked(self, packet_id: int) -> None:
        if self.outlet is not None and not self.outlet.closed:
            self.outlet.acked(packet_id, True)
        else:
            self.session.inflight_out.pop(packet_id, None)
