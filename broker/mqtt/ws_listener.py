"""The MQTT-over-WebSocket listener: binary frames only, bounded handshake, and a close that frees the socket.

Replaces amqtt 0.12.1's `websockets.serve` call and its `WebSocketsReader`/`WebSocketsWriter`:
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

import io
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from http import HTTPStatus
from typing import Any

import websockets
from amqtt.adapters import WebSocketsReader, WebSocketsWriter
from websockets import ConnectionClosed
from websockets.asyncio.server import Server, ServerConnection
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from broker.config import LimitsConfig
from broker.limiter import LogThrottle
from broker.web_guard import WebGuard, local_of

__all__ = ["BinaryFramesReader", "FailingWriter", "TimedConnection", "fail", "serve"]

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


def accepted_at(ws: ServerConnection) -> float | None:
    return ws.accepted_at if isinstance(ws, TimedConnection) else None


class BinaryFramesReader(WebSocketsReader):
    """amqtt's reader, except that a TEXT frame fails the connection [MQTT-6.0.0-1]."""

    _stream: io.BytesIO  # amqtt's WebSocketsReader buffer (set in its __init__)

    def __init__(self, protocol: ServerConnection) -> None:
        super().__init__(protocol)
        self.connection = protocol

    async def _feed_buffer(self, n: int = 1) -> None:
        buffer = bytearray(self._stream.read())
        while len(buffer) < n:
            try:
                message = await self.connection.recv()
            except ConnectionClosed:
                break
            if isinstance(message, str):
                peer = self.connection.remote_address
                _quiet.log(log, logging.WARNING, f"text {peer[0] if peer else '?'}",
                           "closing MQTT-over-WebSocket connection from %s: TEXT frame [MQTT-6.0.0-1]", peer)
                fail(self.connection, CloseCode.UNSUPPORTED_DATA, "MQTT needs binary frames")
                buffer.clear()
                break
            buffer.extend(message)
        self._stream = io.BytesIO(buffer)


class FailingWriter(WebSocketsWriter):
    """amqtt's writer, whose close frees the socket at once (see the module docstring)."""

    _stream: io.BytesIO  # amqtt's WebSocketsReader buffer (set in its __init__)

    def __init__(self, protocol: ServerConnection) -> None:
        super().__init__(protocol)
        self.connection = protocol

    async def close(self) -> None:
        fail(self.connection)
