"""The MQTT-over-WebSocket listener: binary frames only, bounded handshake, and a close that frees the socket.

Replaces amqtt 0.12.1's `websockets.serve` call and its `WebSocketsReader`/`WebSocketsWriter`; each connection is
an `MqttProtocol` (as on TCP) over a `WsTransport`, fed by one small pump task (`pump`):
* amqtt turned a TEXT frame into bytes and parsed it as MQTT; MQTT 3.1.1 §6 says "MQTT Control
  Packets MUST be sent in WebSocket binary data frames. If any other type of data frame is received
  the recipient MUST close the Network Connection" [MQTT-6.0.0-1]. Here a TEXT frame fails the
  WebSocket (close code 1003) and the reader reports end-of-stream.
* amqtt's close ran the closing handshake: a close frame, then up to websockets' `close_timeout`
  (10 s) waiting for the peer's close frame, with the socket open all that time. A silent or hostile
  peer never answers, so the broker now *fails* the WebSocket (RFC 6455 §7.1.7: send a close frame,
  then close the TCP connection without waiting), which is also what the server SHOULD do first
  after a normal close (§7.1.1).
* a handshake whose `Host` does not name the box, or whose browser `Origin` is neither the console's
  nor one of `http.cors_origins`, gets 403 (`broker.web_guard`: DNS rebinding and cross-site pages).
* every connection records when it was accepted, so the CONNECT deadline counts the WebSocket (and
  TLS) handshake too: `limits.connect_timeout_s` bounds accept-to-CONNECT on this listener as on TCP.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import websockets
from websockets import ConnectionClosed
from websockets.asyncio.server import Server, ServerConnection
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from broker.config import LimitsConfig
from broker.limiter import LogThrottle
from broker.mqtt.pumped import PumpedTransport
from broker.web_guard import WebGuard, local_of

if TYPE_CHECKING:
    from broker.mqtt.protocol import MqttProtocol

__all__ = ["TimedConnection", "WsTransport", "fail", "pump", "serve"]

log = logging.getLogger("intercom.hardening")
_quiet = LogThrottle()
# Bounds websockets' own closing waits (server shutdown, a close the peer started); our closes never wait.
CLOSE_TIMEOUT_S = 1.0


class TimedConnection(ServerConnection):
    """websockets' server connection, stamped with the time the TCP connection was accepted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accepted_at = time.monotonic()


def browser_check(guard: WebGuard) -> Callable[[ServerConnection, Request], Response | None]:
    """websockets' `process_request`: 403 for a `Host` that does not name the box or a foreign `Origin`."""

    def check(connection: ServerConnection, request: Request) -> Response | None:
        local = local_of(connection.transport.get_extra_info("sockname"))
        host, origin = request.headers.get("Host"), request.headers.get("Origin")
        if guard.host_allowed(host, local):
            if guard.origin_allowed(origin, local):
                return None
            why = f"origin {origin!r} is not allowed (http.cors_origins)"
        else:
            why = f"Host {host!r} does not name this box (http.allowed_hosts)"
        peer = connection.remote_address
        _quiet.log(log, logging.WARNING, f"browser {peer[0] if peer else '?'}",
                   "refused MQTT-over-WebSocket handshake from %s: %s", peer, why)
        return connection.respond(HTTPStatus.FORBIDDEN, why + "\n")

    return check


async def serve(handler: Callable[[ServerConnection], Awaitable[None]], address: str | None, port: int,
                context: ssl.SSLContext | None, limits: LimitsConfig, guard: WebGuard) -> Server:
    """amqtt's `websockets.serve`, bounded by `limits:` (message size, handshake time), failing fast on close,
    and refusing foreign browsers (`guard`)."""
    return await websockets.serve(
        handler, address, port, ssl=context, subprotocols=[websockets.Subprotocol("mqtt")],
        max_size=limits.max_packet_bytes, open_timeout=limits.connect_timeout_s, close_timeout=CLOSE_TIMEOUT_S,
        create_connection=TimedConnection, process_request=browser_check(guard))


def fail(ws: ServerConnection, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
    """Send a close frame and close the TCP connection now, without waiting for the peer's close frame."""
    if ws.protocol.state is not State.CLOSED:
        with suppress(Exception):  # an invalid state only means a close is already under way
            ws.protocol.fail(code, reason)
        data = b"".join(ws.protocol.data_to_send())  # the close frame; b"" marks EOF and adds nothing
        if data and not ws.transport.is_closing():
            ws.transport.write(data)
    ws.transport.close()


class WsTransport(PumpedTransport):
    """A WebSocket as the transport of an `MqttProtocol`: each write is one binary frame, sent at once."""

    def __init__(self, ws: ServerConnection) -> None:
        super().__init__()
        self.ws = ws
        self._reading = asyncio.Event()
        self._reading.set()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        ws = self.ws
        if ws.protocol.state is not State.OPEN:
            return
        with suppress(Exception):  # the peer is going away
            ws.protocol.send_binary(bytes(data))
            ws.send_data()

    async def drain(self) -> None:
        if self.ws.protocol.state is State.OPEN:
            await self.ws.drain()

    def is_closing(self) -> bool:
        return self.ws.protocol.state is not State.OPEN or self.ws.transport.is_closing()

    def close(self) -> None:
        fail(self.ws)

    def abort(self) -> None:
        fail(self.ws)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.ws.transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self.ws.transport.get_write_buffer_size()

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set()


async def pump(ws: TimedConnection, protocol: MqttProtocol) -> None:
    """Feed a WebSocket's binary messages to `protocol` until the connection closes; a TEXT frame fails it
    [MQTT-6.0.0-1]."""
    transport = WsTransport(ws)
    protocol.connection_made(transport)
    try:
        while not transport.is_closing():
            await transport._reading.wait()
            message = await ws.recv()
            if isinstance(message, str):
                peer = ws.remote_address
                _quiet.log(log, logging.WARNING, f"text {peer[0] if peer else '?'}",
                           "closing MQTT-over-WebSocket connection from %s: TEXT frame [MQTT-6.0.0-1]", peer)
                fail(ws, CloseCode.UNSUPPORTED_DATA, "MQTT needs binary frames")
                break
            protocol.data_received(message)
    except ConnectionClosed:
        pass
    finally:
        protocol.connection_lost(None)
