"""One registered MQTT connection (3.1.1 or 5): decodes each framed packet strictly and hands it to the broker.

`Connection` is the handler in the broker's session table (`_sessions[client_id] = (session, connection)`), so
takeover, shutdown and routing reach every connection alike; its outlet (`make_outlet`) writes PUBLISH packets.
Its socket is a `protocol.MqttProtocol`, which frames and validates the bytes (`packet_guard`) and calls `handle`
per packet, synchronously; a handler that must await is returned to it as an awaitable. Each packet is decoded
by `codec` before any of it is used, and a violation ends the connection with a DISCONNECT carrying the reason
code (MQTT 5), then a close [MQTT-4.13.1-1]. Topic Aliases the client sets live here, per connection
[MQTT-3.3.2-7].

What the connection needs of its socket, of the broker's packet handlers and of the router is named here
(`Socket`, `Handlers`, `PublishPath`): the engine above calls down into the connection, and nothing here imports
it back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

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
    Subscribe,
)
from broker.mqtt.outlet import CoalescingWriter, DeliveryLimits, Outlet, Wire
from broker.mqtt.peer import Peer
from broker.mqtt.reason import ProtocolError, Reason, wrong_ack
from broker.mqtt.send_publish import Link, PublishOutlet
from broker.mqtt.session import Session

__all__ = ["Connection", "Handlers", "PublishPath", "Socket"]

_LINGER_S = 1.0


class Socket(Wire, Protocol):
    """The connection's socket (`protocol.MqttProtocol`): what the writer writes to, and its end."""

    def close(self) -> None: ...

    async def linger(self, seconds: float) -> None: ...


class _Hooks(Protocol):
    @property
    def sync_publish(self) -> bool: ...


class PublishPath(Protocol):
    """Where a PUBLISH goes (`router.Router`)."""

    def hooks(self) -> _Hooks: ...

    def publish_plain(self, conn: Connection, flags: int, body: bytes, version: int) -> bool: ...

    def publish_packet(self, conn: Connection, pub: Publish) -> Awaitable[None] | None: ...


class Handlers(Protocol):
    """The broker's handlers of the packets that are not a PUBLISH or its acknowledgements (`engine.IntercomBroker`)."""

    @property
    def router(self) -> PublishPath: ...

    def pubrel(self, conn: Peer, packet_id: int) -> Awaitable[None] | None: ...

    def subscribe(self, conn: Peer, sub: Subscribe) -> Awaitable[None]: ...

    def unsubscribe(self, conn: Peer, packet_id: int, filters: list[str]) -> Awaitable[None]: ...


class Connection:
    """The handler of one registered network connection (see the module docstring)."""

    __slots__ = (
        "_done",
        "alias_max",
        "aliases",
        "broker",
        "closed",
        "closing",
        "ended",
        "fast",
        "goodbye",
        "link",
        "outlet",
        "present",
        "router",
        "server",
        "session",
        "version",
        "will",
        "wire",
        "writer",
    )

    def __init__(self, broker: Handlers, session: Session, wire: Socket, link: Link, alias_max: int,
                 server: Any = None, present: bool = False) -> None:
        self.broker = broker
        self.session = session
        self.wire = wire
        self.writer = CoalescingWriter(wire, asyncio.get_running_loop())  # one transport write per loop iteration
        self.link = link
        self.version = link.version  # the protocol the packet handlers answer in (`handle_subscribe.Peer`)
        self.alias_max = alias_max  # the Topic Alias Maximum the broker announced
        self.aliases: dict[int, str] | None = None  # the client's Topic Aliases, once it sets one
        self.closed = False  # nothing more is written or handled
        self.outlet: PublishOutlet | None = None
        self.goodbye: Disconnect | None = None  # the client's DISCONNECT, once it sent one
        self.will: Any = None  # the Will to publish if the connection ends abnormally (set by the broker)
        self.server = server  # amqtt's listener `Server`: the connection holds one of its slots until it ends
        self.present = present  # it resumed an existing session
        self.closing = False  # a takeover or a revocation is ending it
        self.ended = False
        self._done: asyncio.Event | None = None  # made when someone waits for the end (a takeover)
        # every ACL answers without awaiting and no plugin listens to message events: the hand-decoded PUBLISH
        self.router = broker.router  # every PUBLISH goes to the composed per-message path
        self.fast: bool = self.router.hooks().sync_publish

    # -- registration: what a takeover or a revocation finds by client id --------------------------

    @property
    def done(self) -> asyncio.Event:
        """Set once the connection has ended (before its session's cleanup)."""
        if self._done is None:
            self._done = asyncio.Event()
            if self.ended:
                self._done.set()
        return self._done

    def set_ended(self) -> None:
        self.ended = True
        if self._done is not None:
            self._done.set()

    async def close(self) -> None:
        """End the connection now: MQTT 5 gets DISCONNECT 0x8E [MQTT-3.1.4-3], flushed (at most 1 s, so a peer
        that does not read cannot hold the takeover up), then the socket closes."""
        self.closing = True
        await self.handle_connection_closed()

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
        """Send DISCONNECT with `reason` (§4.13), flush, and close: the connection then ends.

        `linger`: the client may still be sending (it has not seen the DISCONNECT yet); half-close and read
        and drop what comes for up to `_LINGER_S`, so the client reads the DISCONNECT instead of a reset."""
        if self.closed:
            return
        self.closed = True
        wire = self.wire
        if self.version == V311:  # no server DISCONNECT in 3.1.1: the connection just closes
            self.writer.flush()
            wire.close()
            return
        self.writer.write(encode.encode_disconnect(reason))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.drain(), 1.0)
        if linger:
            await wire.linger(_LINGER_S)
        wire.close()

    # -- reading -----------------------------------------------------------------------------------

    def handle(self, first: int, body: bytes) -> Awaitable[Any] | None:
        """Handle one framed packet: None when done, or an awaitable the connection must await before the next
        (its handler waits for something). A DISCONNECT is kept in `goodbye`; a protocol error raises."""
        kind = first >> 4
        broker = self.broker
        version = self.version
        if kind == PUBLISH:
            if self.fast and self.router.publish_plain(self, first & 0x0F, body, version):
                return None
            return self.router.publish_packet(self, self.decode_publish(first & 0x0F, body, version))
        if kind == PUBACK:
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
            released: Awaitable[None] | None = broker.pubrel(self, codec.decode_ack(PUBREL, body, version).packet_id)
            return released
        elif kind == PUBCOMP:
            packet_id = codec.decode_ack(PUBCOMP, body, version).packet_id
            if (wrong := wrong_ack(self.session.inflight_out, PUBCOMP, packet_id)) is not None:
                raise wrong
            if self.outlet is not None:
                self.outlet.pubcomp(packet_id)
            else:
                self.session.inflight_out.pop(packet_id, None)
        elif kind == SUBSCRIBE:
            subscribed: Awaitable[None] = broker.subscribe(self, codec.decode_subscribe(body, version))
            return subscribed
        elif kind == UNSUBSCRIBE:
            packet_id, filters, _ = codec.decode_unsubscribe(body, version)
            unsubscribed: Awaitable[None] = broker.unsubscribe(self, packet_id, filters)
            return unsubscribed
        elif kind == PINGREQ:
            self.write(b"\xd0\x00")
        elif kind == DISCONNECT:
            self.goodbye = codec.decode_disconnect(body, version)
        elif kind == AUTH:
            # no Authentication Method was accepted at CONNECT: an AUTH is a Protocol Error (MQTT 5.0 §4.12)
            raise ProtocolError(PROTOCOL_ERROR, "AUTH packet without enhanced authentication")
        return None

    def decode_publish(self, flags: int, body: bytes, version: int = V5) -> Publish:
        """Decode a PUBLISH and resolve its Topic Alias (§3.3.2.3.4)."""
        pub = codec.decode_publish(flags, body, version)
        alias = pub.props.get(TOPIC_ALIAS)
        if alias is not None:
            if alias > self.alias_max:
                raise ProtocolError(TOPIC_ALIAS_INVALID, f"Topic Alias {alias} above the maximum {self.alias_max}")
            if pub.topic:
                if self.aliases is None:
                    self.aliases = {}
                self.aliases[alias] = pub.topic
            else:
                topic = self.aliases.get(alias) if self.aliases is not None else None
                if topic is None:
                    raise ProtocolError(PROTOCOL_ERROR, f"Topic Alias {alias} was never set")  # (MQTT 5.0 §3.3.2.3.4)
                pub.topic = topic
        elif not pub.topic:
            raise ProtocolError(PROTOCOL_ERROR, "empty topic without a Topic Alias")
        return pub

    def acked(self, packet_id: int) -> None:
        if self.outlet is not None and not self.outlet.closed:
            self.outlet.acked(packet_id)
        else:
            self.session.inflight_out.pop(packet_id, None)
