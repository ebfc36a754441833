"""Bridge mode on a local Mosquitto: call setup latency through the bridge, and how fast the link comes back
after a broker outage (docs/scale-out.md). Bounded: 40 calls, two outages; 127.0.0.1 only.

Run: PYTHONPATH=. .venv/bin/python bench/bridge_link.py
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import aiomqtt

from broker.bridge import BridgedServer
from tests.mosquitto_helpers import Mosquitto
from tests.support.harness import Harness, make_settings
from tests.support.inbox import Inbox

CALLS = 40


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bridge-link-"))
    mosq = Mosquitto(tmp)
    await mosq.start()
    server = BridgedServer(make_settings(tmp), f"mqtt://127.0.0.1:{mosq.port}", site_id="a")
    await server.start()
    h = Harness(server, aiohttp.ClientSession())  # type: ignore[arg-type]
    try:
        async with aiomqtt.Client("127.0.0.1", mosq.port, identifier="r2") as r2, \
                aiomqtt.Client("127.0.0.1", mosq.port, identifier="d1") as d1:
            await r2.subscribe("sites/a/users/2/calls/incoming", qos=1)
            inbox = Inbox(r2)
            lat = []
            for _ in range(CALLS):
                n = len(inbox.messages)
                t0 = time.perf_counter()
                await d1.publish("sites/a/calls/request/1", json.dumps({"household_number": "101"}), qos=1)
                _, ring = await inbox.wait_for(lambda t, b, n=n: len(inbox.messages) > n)
                lat.append((time.perf_counter() - t0) * 1000)
                await d1.publish("sites/a/devices/1/calls/control", json.dumps(
                    {"call_info": {"call_id": ring["call_id"], "action": "cancelled"}}), qos=1)
                await asyncio.sleep(0.05)
            await inbox.close()
        lat.sort()
        print(f"call setup through the bridge (door publish -> resident incoming), n={CALLS}: "
              f"p50 {statistics.median(lat):.1f} ms, p90 {lat[int(CALLS * 0.9)]:.1f} ms, max {lat[-1]:.1f} ms")
        bridge = server.bridge
        assert bridge is not None
        for outage in (1.0, 5.0):
            mosq.stop()
            t_stop = time.perf_counter()
            while bridge.connected.is_set():  # noqa: ASYNC110 (the bridge has no "lost" event)
                await asyncio.sleep(0.01)
            seen = time.perf_counter() - t_stop
            await asyncio.sleep(outage)
            await mosq.start()
            t_up = time.perf_counter()
            await asyncio.wait_for(bridge.connected.wait(), 60)
            print(f"outage {outage:.0f} s: link loss seen after {seen * 1000:.0f} ms, relinked "
                  f"{time.perf_counter() - t_up:.2f} s after the broker was back ({bridge.attempts} attempts)")
        print(f"instance max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
              "(the bench's own clients included)")
    finally:
        await h.http.close()
        await server.stop()
        mosq.stop()


if __name__ == "__main__":
    asyncio.run(main())
