"""Call admission: refusals with a retry hint, and the loop-lag signal."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker.core.admission import CallAdmission, LoopLag, TooBusy
from tests.support.inbox import parties


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_setup_rate_refuses_past_the_burst_and_recovers() -> None:
    clock = Clock()
    admission = CallAdmission(max_setups_per_s=10, burst=3, max_active_calls=100, max_loop_lag_s=1, clock=clock)
    for _ in range(3):
        admission.admit(active_calls=0)
    with pytest.raises(TooBusy) as refused:
        admission.admit(active_calls=0)
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "1"}
    clock.now += 0.1
    admission.admit(active_calls=0)
    assert admission.refused == 1


def test_the_active_call_cap_and_a_late_loop_refuse() -> None:
    lag = [0.0]
    admission = CallAdmission(1000, 1000, max_active_calls=2, max_loop_lag_s=0.25, lag=lambda: lag[0])
    admission.admit(active_calls=1)
    with pytest.raises(TooBusy, match="2 calls in progress"):
        admission.admit(active_calls=2)
    lag[0] = 0.4
    with pytest.raises(TooBusy, match="event loop 400 ms behind"):
        admission.admit(active_calls=0)


async def test_loop_lag_sees_a_blocked_loop_and_decays() -> None:
    lag = LoopLag(interval_s=0.01)
    lag.start()
    await asyncio.sleep(0.05)
    time.sleep(0.3)  # noqa: ASYNC251 - block the loop, as a burst of synchronous work would
    seen = 0.0
    for _ in range(10):
        await asyncio.sleep(0.003)
        seen = max(seen, lag.lag_s)
    assert seen >= 0.2
    async with asyncio.timeout(3):  # decays once the loop is on time again (bounded: a busy CI box)
        while lag.lag_s >= 0.1:  # noqa: ASYNC110 - polling the sampled value is the point
            await asyncio.sleep(0.02)
    lag.stop()


async def test_a_call_burst_beyond_the_setup_rate_gets_503_over_rest_and_mqtt(make_harness) -> None:
    """Past `calls.max_setups_per_s` a setup is refused at once (REST 503 + Retry-After, MQTT error on
    the device's control topic); nothing is stored for it, and the running call is unaffected."""
    h = await make_harness(calls={"max_setups_per_s": 0.01, "setup_burst": 1})
    async with parties(h) as party:
        dev5 = await party("device", "5")
        first = await h.start_call("1")
        async with h.http.post(h.base + "/api/mqtt/call", json={"device_id": "5"}) as r:
            body = await r.json()
            assert r.status == 503
            assert body["code"] == 503
            assert "retry after" in body["message"]
            assert int(r.headers["Retry-After"]) >= 1
        await dev5.client.publish("calls/request/5", b"{}", qos=1)
        _, err = await dev5.wait_for(lambda t, b: isinstance(b, dict) and "error" in b)
        assert err["error"]["code"] == 503
        status, active = await h.get("/api/calls/active?device_id=5")
        assert status == 200
        assert active["data"] == []
        assert h.svc.calls.active_count == 1
        assert h.svc.calls.admission.refused == 2
        status, _ = await h.post("/api/mqtt/controller/device", {"call_info": {
            "call_id": first["call_id"], "action": "hangup"}})
        assert status == 200
