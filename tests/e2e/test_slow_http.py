"""Slow HTTP clients past the server's descriptor limit must not lock out REST or MQTT (a subprocess
server under `ulimit -n 256`, attacked from 127.0.0.1 by more slow-header connections than that)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.process import ServerProcess
from tests.support.raw_mqtt import Raw, connect

FD_LIMIT = 256
ATTACKERS = 300  # more than the server has descriptors
LINE_EVERY_S = 1.0  # one more header line each second, never the blank line that ends the head
HEADER_TIMEOUT_S = 2.0


def _lower_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


async def _slow_client(port: int, stop: asyncio.Event) -> None:
    """Open a connection, send a request head one line at a time forever; reconnect when cut off."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            while not stop.is_set() and not reader.at_eof():
                await asyncio.sleep(LINE_EVERY_S)
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


async def _healthz_within(port: int, seconds: float) -> bool:
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                         timeout=aiohttp.ClientTimeout(total=seconds)) as http, \
                http.get(f"http://127.0.0.1:{port}/healthz") as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _mqtt_connect_within(port: int, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            raw = await Raw.open(port)
            try:
                return await raw.connack(connect("device-d0"), timeout=seconds) == 0
            finally:
                await raw.close()
    except (OSError, TimeoutError):
        return False


@pytest.mark.slow
async def test_slow_header_flood_past_the_fd_limit_leaves_rest_and_mqtt_reachable(tmp_path: Path) -> None:
    """300 slow-header connections against `ulimit -n 256`: 3 header timeouts into the attack a new
    /healthz and a new MQTT CONNECT each succeed within 2 s, three times over."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < ATTACKERS + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    server = ServerProcess(tmp_path, {"limits": {"http_header_timeout_s": HEADER_TIMEOUT_S}},
                           preexec_fn=_lower_fd_limit).start()
    stop = asyncio.Event()
    attack = [asyncio.create_task(_slow_client(server.http_port, stop)) for _ in range(ATTACKERS)]
    try:
        await asyncio.sleep(3 * HEADER_TIMEOUT_S)
        results = []
        for _ in range(3):
            started = time.monotonic()
            results.append((await _healthz_within(server.http_port, 2.0),
                            await _mqtt_connect_within(server.mqtt_port, 2.0)))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        assert server.proc is not None, "the server died"
        assert server.proc.poll() is None, "the server died"
        assert results == [(True, True)] * 3, f"(healthz ok, mqtt ok) per probe: {results}"
    finally:
        stop.set()
        for task in attack:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*attack, return_exceptions=True)
        server.stop()


async def _open_partial(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    await writer.drain()
    return reader, writer


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """Everything the server sent before closing, or None if it kept the connection open."""
    try:
        async with asyncio.timeout(seconds):
            return await reader.read()
    except TimeoutError:
        return None


async def test_a_request_head_that_does_not_complete_in_time_is_cut_off(make_harness) -> None:
    """One header line every 0.2 s with http_header_timeout_s 0.5: closed within about 1 s."""
    h = await make_harness(limits={"http_header_timeout_s": 0.5})
    reader, writer = await _open_partial(h.server.http_port)
    started = time.monotonic()
    async def trickle() -> None:
        with contextlib.suppress(OSError):
            while True:
                await asyncio.sleep(0.2)
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
    task = asyncio.create_task(trickle())
    try:
        assert await _closed_within(reader, 2.0) is not None
        assert time.monotonic() - started < 1.5
    finally:
        task.cancel()
        writer.close()


async def test_a_request_body_that_does_not_arrive_in_time_gets_408(make_harness) -> None:
    """A head announcing 100 bytes, then 10: 408 envelope after http_body_timeout_s, then the connection closes."""
    h = await make_harness(limits={"http_body_timeout_s": 0.5})
    reader, writer = await asyncio.open_connection("127.0.0.1", h.server.http_port)
    writer.write(b"POST /api/mqtt/call HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"device_i")
    await writer.drain()
    try:
        got = await _closed_within(reader, 3.0)
        assert got is not None, got
        assert got.startswith(b"HTTP/1.1 408"), got
        assert b'"code": 408' in got
    finally:
        writer.close()


async def test_past_the_connection_cap_the_oldest_waiting_connection_makes_room(make_harness) -> None:
    """max_http_connections 4, all held by unfinished heads: a new request is served, the oldest is closed."""
    h = await make_harness(limits={"max_http_connections": 4})
    held = [await _open_partial(h.server.http_port) for _ in range(4)]
    await asyncio.sleep(0.1)
    try:
        assert (await h.get("/healthz"))[0] == 200
        assert await _closed_within(held[0][0], 1.0) is not None  # the oldest made room
        assert await _closed_within(held[3][0], 0.2) is None  # the newest still waits for its head
    finally:
        for _, writer in held:
            writer.close()
