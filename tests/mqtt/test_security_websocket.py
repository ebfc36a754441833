"""MQTT over WebSocket framing [MQTT-6.0.0-1] and the CONNECT deadline on every listener (TCP, WS, TLS)."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import time

import pytest
import websockets

from tests.support.raw_mqtt import connect, publish, subscribe
from tests.support.tls import client_ctx, tls_section

MQTT = [websockets.Subprotocol("mqtt")]
TIMEOUT_S = 1.0
SLACK_S = 0.6  # the deadline sweeper's tick, a loaded 2-core box


async def _ws_handshake(port: int, tls: ssl.SSLContext | None = None, delay_s: float = 0.0) -> asyncio.StreamReader:
    """A raw TCP (or TLS) socket that completes the WebSocket handshake after `delay_s`, then stays silent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    await asyncio.sleep(delay_s)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
                 .encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 101"), head
    reader._intercom_writer = writer  # type: ignore[attr-defined] - kept open (a silent peer never closes)
    return reader


async def _seconds_until_eof(reader: asyncio.StreamReader, limit_s: float = 15.0) -> float:
    """Read (and ignore, e.g. a close frame) until the server closes the TCP connection; seconds it took."""
    start = time.monotonic()
    async with asyncio.timeout(limit_s):
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
    return time.monotonic() - start


async def _until_closed(ws: websockets.ClientConnection, limit_s: float = 3.0) -> list[str | bytes]:
    """Messages received until the broker closes the WebSocket (TimeoutError if it stays open)."""
    got: list[str | bytes] = []
    async with asyncio.timeout(limit_s):
        try:
            while True:
                got.append(await ws.recv())
        except websockets.ConnectionClosed:
            return got


async def test_mqtt_in_a_text_frame_closes_the_connection(harness):
    """A CONNECT sent in a TEXT frame gets no CONNACK: the broker closes the connection [MQTT-6.0.0-1]."""
    uri = f"ws://127.0.0.1:{harness.server.ws_port}/mqtt"
    async with websockets.connect(uri, subprotocols=MQTT) as ws:
        await ws.send(connect("ws-text").decode("ascii"))  # the same bytes, as text
        assert await _until_closed(ws) == [], "the broker answered a CONNECT sent as text"
    assert ws.close_code == 1003
    assert not [s for s in harness.server.broker._sessions if s == "ws-text"]


async def test_text_frame_after_connect_closes_the_connection(harness):
    """After a binary CONNECT, a PUBLISH sent in a TEXT frame is not routed: the connection is closed."""
    uri = f"ws://127.0.0.1:{harness.server.ws_port}/mqtt"
    async with websockets.connect(uri, subprotocols=MQTT) as ws:
        await ws.send(connect("ws-text-later"))
        assert (await asyncio.wait_for(ws.recv(), 3))[:1] == b"\x20"
        await ws.send(subscribe([("echo/t", 0)]))
        assert (await asyncio.wait_for(ws.recv(), 3))[:1] == b"\x90"
        await ws.send(publish("echo/t", b"as-text").decode("ascii"))  # an all-ASCII PUBLISH, as text
        got = await _until_closed(ws)
        assert not [m for m in got if isinstance(m, bytes) and m.endswith(b"as-text")], "a text PUBLISH was routed"


async def test_silent_websocket_is_released_at_the_connect_timeout(make_harness):
    """A WebSocket that completes its handshake and sends nothing loses its TCP connection at connect_timeout_s."""
    h = await make_harness(limits={"connect_timeout_s": TIMEOUT_S})
    start = time.monotonic()
    reader = await _ws_handshake(h.server.ws_port)
    await _seconds_until_eof(reader)
    assert time.monotonic() - start < TIMEOUT_S + SLACK_S


async def test_slow_websocket_handshake_counts_against_the_connect_timeout(make_harness):
    """The time spent in the WebSocket handshake counts: CONNECT must come within connect_timeout_s of accept."""
    h = await make_harness(limits={"connect_timeout_s": TIMEOUT_S})
    start = time.monotonic()
    reader = await _ws_handshake(h.server.ws_port, delay_s=0.7 * TIMEOUT_S)
    await _seconds_until_eof(reader)
    assert time.monotonic() - start < TIMEOUT_S + SLACK_S


async def test_silent_tcp_is_released_at_the_connect_timeout(make_harness):
    """A plain TCP connection that sends nothing is closed at connect_timeout_s."""
    h = await make_harness(limits={"connect_timeout_s": TIMEOUT_S})
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", h.server.mqtt_port)
    await _seconds_until_eof(reader)
    assert time.monotonic() - start < TIMEOUT_S + SLACK_S
    writer.close()


@pytest.mark.parametrize("listener", ["tls", "wss"])
async def test_silent_tls_is_released_at_the_connect_timeout(make_harness, pki, listener):
    """Over TLS (MQTT or WebSocket), a client that handshakes and sends nothing is released at connect_timeout_s."""
    h = await make_harness(limits={"connect_timeout_s": TIMEOUT_S},
                           mqtt={"tls": tls_section(pki, plain=False)})
    start = time.monotonic()
    if listener == "tls":
        reader, _ = await asyncio.open_connection("127.0.0.1", h.server.mqtts_port, ssl=client_ctx(pki))
    else:
        reader = await _ws_handshake(h.server.ws_port, tls=client_ctx(pki))
    took = await _seconds_until_eof(reader)
    assert time.monotonic() - start < TIMEOUT_S + SLACK_S, f"released {took:.2f} s after the handshake"
