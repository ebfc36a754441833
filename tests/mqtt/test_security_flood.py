"""Bounded flood on 127.0.0.1: 2,000 bad-password CONNECTs while a real call completes with normal latency."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

from tests.support.inbox import Inbox
from tests.support.process import ROOT
from tests.support.raw_mqtt import Raw, connect
from tests.support.security import login, secure_harness

ATTEMPTS = 2000
CONCURRENCY = 100


async def bad_connect(port: int, i: int) -> str:
    """One brute-force attempt; how it ended: 'accept-refused', 'connack-<rc>' or 'error'."""
    try:
        raw = await Raw.open(port)
    except OSError:
        return "error"
    try:
        who = ("2", "3", "4", "1")[i % 4]
        code = await raw.connack(connect(f"bf-{i}", who, f"resident.{who}.guess{i:030d}"), timeout=10)
        return "accept-refused" if code is None else f"connack-{code}"
    except (OSError, TimeoutError):
        return "error"
    finally:
        await raw.close()


async def run_flood(port: int) -> list[str]:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def attempt(i: int) -> str:
        async with sem:
            return await bad_connect(port, i)

    return await asyncio.gather(*(attempt(i) for i in range(ATTEMPTS)))


async def call_latency(h, t, dev: Inbox) -> float:
    """Seconds from the device's call request to it hearing that resident 2 answered (over MQTT)."""
    t0 = time.perf_counter()
    status, resp = await h.post("/api/mqtt/call", {"device_id": "1"}, t["device-1"])
    assert status == 200, resp
    call_id = resp["data"]["call_id"]
    await h.r2_inbox.wait_for(lambda topic, b: topic == "users/2/calls/incoming" and b.get("call_id") == call_id)
    await h.r2.publish("users/2/calls/control", json.dumps(
        {"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
    await dev.wait_for(lambda topic, b: b.get("origin") == "server" and b.get("call_info", {}).get("call_id") ==
                       call_id and b["call_info"].get("action") == "answered", timeout=10)
    elapsed = time.perf_counter() - t0
    status, _ = await h.post("/api/mqtt/controller/device", {"call_info": {"call_id": call_id, "action": "hangup"}},
                             t["device-1"])
    assert status == 200
    return elapsed


async def test_two_thousand_bad_connects_while_a_call_completes(make_harness):
    """The flood is refused (mostly at accept, by the per-address limit) and a call's latency stays normal."""
    h, t = await secure_harness(make_harness, limits={"exempt_networks": []})
    async with h.mqtt(**login(t, "device-1")) as d1, h.mqtt(**login(t, "resident-2")) as r2:
        await d1.subscribe("devices/1/#", qos=1)
        await r2.subscribe("users/2/#", qos=1)
        dev, h.r2_inbox, h.r2 = Inbox(d1), Inbox(r2), r2
        baseline = await call_latency(h, t, dev)

        t0 = time.perf_counter()
        # The attacker is another process, as it would be another machine: the server's loop serves only us.
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.mqtt.test_security_flood", str(h.server.mqtt_port),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        assert attacker.stdout is not None
        assert await asyncio.wait_for(attacker.stdout.readline(), 30) == b"flooding\n"
        await asyncio.sleep(0.2)
        during = await call_latency(h, t, dev)
        assert attacker.returncode is None, "the flood was over before the call was"
        out, _ = await asyncio.wait_for(attacker.communicate(), 60)
        outcomes = Counter(json.loads(out))
        flood_s = time.perf_counter() - t0
        await dev.close()
        await h.r2_inbox.close()

    assert outcomes["connack-0"] == 0, outcomes
    assert outcomes["accept-refused"] >= ATTEMPTS * 0.8, outcomes  # the per-address CONNECT limit did the work
    assert outcomes["connack-5"] >= 1, outcomes  # the first ones reached authentication and failed it
    assert during < max(0.5, 5 * baseline), (baseline, during)
    assert flood_s < 30, flood_s
    print(f"\nflood: {dict(outcomes)} in {flood_s:.2f} s; call latency baseline {baseline * 1000:.0f} ms, "
          f"during flood {during * 1000:.0f} ms")


if __name__ == "__main__":  # the attacker process: python -m tests.mqtt.test_security_flood PORT
    print("flooding", flush=True)
    print(json.dumps(asyncio.run(run_flood(int(sys.argv[1])))))
