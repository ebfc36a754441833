"""Call admission: refusals with a retry hint, and the loop-lag signal."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker.admission import CallAdmission, LoopLag, TooBusy


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
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
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
    assert lag.lag_s < 0.05
    time.sleep(0.2)  # noqa: ASYNC251 - block the loop, as a burst of synchronous work would
    await asyncio.sleep(0.02)
    assert lag.lag_s >= 0.1
    await asyncio.sleep(0.3)
    assert lag.lag_s < 0.05
    lag.stop()
