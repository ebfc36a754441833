"""A slow reader: a subscriber that stops reading must not pin the server's memory, and is disconnected."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.process import ServerProcess
from tests.support.raw_mqtt import Raw, publish

MESSAGES = 4000  # x 60 KB = 240 MB through one subscriber that never reads
PAYLOAD = b"\x5a" * 60 * 1024
MAX_GROWTH_MB = 100
DISCONNECT_WITHIN_S = 15.0


@pytest.mark.slow
async def test_a_subscriber_that_stops_reading_is_bounded_in_bytes_and_disconnected(tmp_path: Path) -> None:
    """4,000 x 60 KB QoS 0 messages to a subscriber that never reads: the server's RSS grows < 100 MB, and
    the server disconnects the subscriber (logged) instead of shedding forever."""
    server = ServerProcess(tmp_path, {"site": {"households": []}}).start()
    try:
        await asyncio.sleep(0.5)
        base = peak = server.rss_mb()
        reader = await Raw.connected(server.mqtt_port, "stuck-reader")
        await reader.subscribe([("feed/#", 0)])
        publisher = await Raw.connected(server.mqtt_port, "publisher")
        for i in range(MESSAGES):
            publisher.writer.write(publish("feed/video", PAYLOAD))
            if i % 20 == 0:
                await publisher.writer.drain()
                peak = max(peak, server.rss_mb())
        await publisher.writer.drain()
        deadline = time.monotonic() + DISCONNECT_WITHIN_S
        cut = False
        while time.monotonic() < deadline and not cut:
            peak = max(peak, server.rss_mb())
            cut = any("stuck-reader" in line and "disconnecting" in line for line in server.log)
            await asyncio.sleep(0.2)
        assert peak - base < MAX_GROWTH_MB, f"RSS {base:.0f} -> peak {peak:.0f} MB"
        assert cut, "the subscriber that stopped reading was never disconnected"
        assert await reader.closed(timeout=10.0)  # what it finally reads ends in EOF/reset
        await publisher.close()
    finally:
        server.stop()
