"""Property-based fuzzing (hypothesis) of every call topic's MQTT payloads and every REST body.

Properties: no 500, no error logged, the broker keeps serving, no call is left stuck, memory stays bounded.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import resource
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CALL_TOPICS = ("calls/request/1", "devices/1/calls/control", "users/2/calls/control", "users/3/calls/control",
               "devices/1/status", "devices/1/commands/ack", "users/2/commands")
POSTS = ("/api/mqtt/call", "/api/rtc/call", "/api/trtc/call", "/api/mqtt/controller/device",
         "/api/mqtt/controller/resident", "/api/mqtt/end-session", "/api/mqtt/device/status",
         "/api/mqtt/system/message", "/api/trtc/usersig", "/api/rtc/token", "/api/admin/households",
         "/api/admin/residents", "/api/admin/devices")
GETS = ("/api/calls", "/api/mqtt/session", "/api/calls/active", "/api/devices/1/status")
ACTIONS = ("initiated", "answered", "rejected", "cancelled", "hangup", "timeout", "ringing", "bogus", "")
KEYS = ("call_info", "call_id", "action", "reason", "timestamp", "device_id", "resident_id", "household_number",
        "target_resident_id", "request_id", "online", "battery", "properties", "type", "level", "message",
        "user_id", "channel_id", "name", "data")

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
           | st.text(max_size=80) | st.sampled_from(("1", "2", "101", "102", *ACTIONS)))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=6),
                           max_leaves=20)
near_valid = st.fixed_dictionaries(
    {"call_info": st.fixed_dictionaries({"call_id": st.text(max_size=70) | st.sampled_from(("", "x")),
                                         "action": st.sampled_from(ACTIONS) | st.text(max_size=40)},
                                        optional={"reason": scalars, "timestamp": scalars})},
    optional={"household_number": scalars, "resident_id": scalars, "device_id": scalars, "request_id": scalars})
bodies = (json_values.map(lambda v: json.dumps(v).encode()) | near_valid.map(lambda v: json.dumps(v).encode())
          | st.binary(max_size=200))
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Errors(logging.Handler):
    """Counts ERROR records from our loggers (an internal error is logged even when it is not a 500)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("intercom"):
            self.records.append(record)


@pytest.fixture
def errors():
    handler = Errors()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


@pytest.fixture
async def fuzz_harness(make_harness):
    """A local-only server with short call timeouts, so any call the fuzz starts ends by itself."""
    return await make_harness(calls={"ring_timeout_s": 1.0, "max_duration_s": 2.0, "party_offline_grace_s": 0.5})


_LOOP: list[asyncio.AbstractEventLoop] = []


async def drive(run: Any) -> None:
    """Run a synchronous hypothesis test in a thread; each example executes on this (the server's) loop."""
    _LOOP[:] = [asyncio.get_running_loop()]
    await asyncio.to_thread(run)


def on_loop(coro: Any) -> None:
    asyncio.run_coroutine_threadsafe(coro, _LOOP[0]).result(timeout=30)


def rss_mb() -> float:
    """Current (not peak) resident set after a collection: peak RSS also counts other tests' garbage."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def assert_healthy(h: Any) -> None:
    status, body = await h.get("/healthz")
    assert status == 200
    assert body["data"]["broker"] is True


async def assert_no_stuck_call(h: Any) -> None:
    for _ in range(100):  # up to 5 s: every fuzz-started call times out (ring 1 s, max duration 2 s)
        if h.svc.calls.active_count == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{h.svc.calls.active_count} calls still active")


async def test_fuzz_mqtt_call_topics(fuzz_harness, errors):
    """Random payloads on every call topic never crash the broker, log an error, or leave a call stuck."""
    h = fuzz_harness
    rss0 = rss_mb()
    ran: list[int] = []
    async with h.mqtt("device-1") as dev, h.mqtt("resident-2") as res:
        # one well-formed request first, so the fuzz also hits a live call's control path
        await dev.publish("calls/request/1", json.dumps({"household_number": "101"}), qos=1)

        async def one(batch: list[tuple[str, bytes]]) -> None:
            ran.append(len(batch))
            for topic, payload in batch:
                client = dev if topic.startswith(("calls", "devices")) else res
                await client.publish(topic, payload, qos=1)  # PUBACK: the broker has handled it

        @FUZZ
        @given(st.lists(st.tuples(st.sampled_from(CALL_TOPICS), bodies), min_size=1, max_size=6))
        def run(batch: list[tuple[str, bytes]]) -> None:
            on_loop(one(batch))

        await drive(run)
        await assert_healthy(h)
    assert len(ran) >= 100, "the fuzz did not reach the call service"
    assert h.svc.calls.history({}, 500), "the fuzz did not reach the call service"
    await assert_no_stuck_call(h)
    assert [r.getMessage() for r in errors.records] == []
    assert rss_mb() - rss0 < 64


async def test_fuzz_rest_bodies(fuzz_harness, errors):
    """Random bodies on every POST endpoint and random queries on GETs never produce a 500."""
    h = fuzz_harness
    rss0 = rss_mb()

    ran: list[str] = []

    async def one(body: bytes, get_path: str, query: str) -> None:
        for path in POSTS:  # every endpoint sees every body
            ran.append(path)
            status, resp = await h.post(path, None, raw=body)
            assert status < 500, (path, body, resp)
        async with h.http.get(h.base + get_path, params={"call_id": query, "limit": query, "resident_id": query,
                                                         "household_number": query}) as r:
            assert r.status < 500, (get_path, query, await r.text())

    @FUZZ
    @given(bodies, st.sampled_from(GETS), st.text(max_size=40))
    def run(body: bytes, get_path: str, query: str) -> None:
        on_loop(one(body, get_path, query))

    await drive(run)
    await assert_healthy(h)
    assert len(ran) >= 100 * len(POSTS)
    await assert_no_stuck_call(h)
    assert [r.getMessage() for r in errors.records] == []
    assert rss_mb() - rss0 < 64


async def test_non_string_request_id_still_gets_an_error_reply(harness, party):
    """A call request whose `request_id` is not a string is answered with a 400 on the device's control topic."""
    dev = await party("device", "1")
    await dev.client.publish("calls/request/1", json.dumps({"request_id": {"a": 1}}), qos=1)
    _, body = await dev.wait_for(lambda t, b: isinstance(b, dict) and b.get("error") is not None, timeout=2)
    assert body["error"]["code"] == 400
