"""QoS 2 memory: QoS 2 PUBLISHes that are never released must not grow the server (a real subprocess)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.process import ProcServer
from tests.support.raw_mqtt import Raw, connect, publish

CLIENTS = 4
PER_CLIENT = 1500  # x 4 clients x 16 KB = 96 MB of payload, never released
PAYLOAD = b"\xa5" * 16 * 1024
MAX_GROWTH_MB = 64
PUBREC = 0x50


async def attacker(port: int, client_id: str, token: str, topic: str) -> int:
    """Send PER_CLIENT 16 KB QoS 2 PUBLISHes, never PUBREL; return how many PUBRECs came back."""
    raw = await Raw.open(port)
    assert await raw.connack(connect(client_id, "2", token)) == 0
    recs = 0

    async def count() -> None:
        nonlocal recs
        while (got := await raw.read_packet(30)) is not None:
            recs += got[0] == PUBREC
            if recs == PER_CLIENT:
                return

    counter = asyncio.create_task(count())
    for i in range(1, PER_CLIENT + 1):
        raw.writer.write(publish(topic, PAYLOAD, qos=2, packet_id=i))
        if i % 50 == 0:
            await raw.writer.drain()
    await raw.writer.drain()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(counter, 30)
    await raw.close()
    return recs


@pytest.mark.slow
async def test_unreleased_qos2_flood_keeps_rss_flat_and_healthz_fast(tmp_path: Path):
    """4 clients x 1,500 x 16 KB QoS 2 to a refused topic, no PUBREL: RSS grows < 64 MB, /healthz < 1 s."""
    server = ProcServer(tmp_path).start()
    try:
        token = server.token("residents", "2")
        await asyncio.sleep(0.5)
        base = server.rss_mb()
        peak = base
        probes: list[float] = []
        failures: list[str] = []
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, server.rss_mb())
                await asyncio.sleep(0.05)

        async def probe(http: aiohttp.ClientSession) -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    async with http.get(f"http://127.0.0.1:{server.http_port}/healthz",
                                        timeout=aiohttp.ClientTimeout(total=1.0)) as r:
                        assert r.status == 200
                    probes.append(time.perf_counter() - t0)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    failures.append(repr(exc))
                await asyncio.sleep(0.1)

        async with aiohttp.ClientSession() as http:
            watchers = [asyncio.create_task(sample()), asyncio.create_task(probe(http))]
            recs = await asyncio.gather(*(attacker(server.mqtt_port, f"resident-2/{i}", token, "users/3/commands")
                                          for i in range(CLIENTS)))
            await asyncio.sleep(1.0)  # the connections are gone; what they held must be too
            after = server.rss_mb()
            done.set()
            await asyncio.gather(*watchers)
        assert recs == [PER_CLIENT] * CLIENTS  # every PUBLISH was read and acknowledged (PUBREC)
        assert peak - base < MAX_GROWTH_MB, f"RSS {base:.0f} -> peak {peak:.0f} MB"
        assert after - base < MAX_GROWTH_MB, f"RSS {base:.0f} -> {after:.0f} MB after disconnect"
        assert not failures, (failures, probes)
        assert len(probes) >= 3, (failures, probes)
        assert max(probes) < 1.0
    finally:
        server.stop()
