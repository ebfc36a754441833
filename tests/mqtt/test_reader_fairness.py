"""Reader fairness: one client pipelining 100,000 packets must not freeze the loop for everybody else."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.process import ProcServer
from tests.support.raw_mqtt import PINGREQ, PINGRESP, Raw, connack5, connect, connect5, publish, publish5

PACKETS = 100_000
WINDOW_S = 6.0
MAX_STALL_S = 1.5


async def flood(port: int, token: str, version: int) -> None:
    """Resident 2 pipelines PACKETS `calls_seen` commands (each a database write on the server) without reading."""
    raw = await Raw.open(port)
    command = b'{"command":"calls_seen"}'
    if version == 5:
        got = await connack5(raw, connect5("resident-2", username="2", password=token.encode()))
        assert got is not None
        assert got[0] == 0
        chunk = publish5("users/2/commands", command) * 1000
    else:
        assert await raw.connack(connect("resident-2", "2", token)) == 0
        chunk = publish("users/2/commands", command) * 1000
    try:
        for _ in range(PACKETS // 1000):
            raw.writer.write(chunk)
            await raw.writer.drain()
        await asyncio.sleep(WINDOW_S)
    finally:
        await raw.close()


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 5])
async def test_a_pipelined_flood_does_not_freeze_healthz_or_a_bystanders_pingresp(tmp_path: Path,
                                                                                   version: int) -> None:
    """During a 100k-packet pipelined flood from one client, /healthz and another client's PINGRESP answer
    within 1.5 s every time (the flooding reader yields to the loop)."""
    server = ProcServer(tmp_path).start()
    try:
        attacker_token, bystander_token = server.token("residents", "2"), server.token("residents", "3")
        bystander = await Raw.open(server.mqtt_port)
        assert await bystander.connack(connect("resident-3", "3", bystander_token, keepalive=60)) == 0
        pings: list[float] = []
        probes: list[float] = []
        attack = asyncio.create_task(flood(server.mqtt_port, attacker_token, version))
        start = time.monotonic()
        async with aiohttp.ClientSession() as http:
            while time.monotonic() - start < WINDOW_S:
                t0 = time.monotonic()
                bystander.writer.write(PINGREQ)
                got = await bystander.read_packet(WINDOW_S)
                assert got is not None
                assert got[0] == PINGRESP
                pings.append(time.monotonic() - t0)
                t0 = time.monotonic()
                with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{server.http_port}/healthz",
                                        timeout=aiohttp.ClientTimeout(total=WINDOW_S)) as r:
                        assert r.status == 200
                probes.append(time.monotonic() - t0)
                await asyncio.sleep(0.1)
        attack.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attack
        await bystander.close()
        assert max(pings) < MAX_STALL_S, f"bystander PINGRESP worst {max(pings):.2f} s"
        assert max(probes) < MAX_STALL_S, f"/healthz worst {max(probes):.2f} s"
        assert len(pings) >= 5, pings
    finally:
        server.stop()
