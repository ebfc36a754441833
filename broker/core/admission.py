"""Call admission: refuse a call setup the box cannot take now (503 + retry hint), never queue it.

Three signals, any one refuses: a site-wide setup rate (token bucket), a cap on live calls, and the
event loop's lag. The lag is what "more than the box can take" means on one event loop: when
callbacks already run late, a setup accepted now would only make every party's notifications later.
Pure apart from `LoopLag`, which samples the running loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from broker.core.errors import Overloaded
from broker.limiter import KeyedLimiter

__all__ = ["CallAdmission", "LoopLag", "TooBusy"]


class TooBusy(Overloaded):
    """503 with a `Retry-After` hint (REST header; MQTT error message text)."""

    def __init__(self, why: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(f"server busy: {why}; retry after {seconds} s")
        self.headers = {"Retry-After": str(seconds)}


class LoopLag:
    """How late the event loop runs a timer, sampled every `interval_s` (0 until started)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            # a decaying max: one late tick is enough to refuse, recovery takes a few on-time ticks
            self.lag_s = max(loop.time() - due, self.lag_s * 0.5)


class CallAdmission:
    def __init__(self, max_setups_per_s: float, burst: int, max_active_calls: int, max_loop_lag_s: float,
                 lag: Callable[[], float] = lambda: 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = KeyedLimiter(max_setups_per_s, burst, clock=clock, max_keys=1)
        self.max_active_calls = max_active_calls
        self.max_loop_lag_s = max_loop_lag_s
        self._lag = lag
        self.refused = 0

    def admit(self, active_calls: int) -> None:
        """Take one setup slot, or raise `TooBusy`."""
        lag = self._lag()
        if lag > self.max_loop_lag_s:
            self._refuse(f"event loop {lag * 1000:.0f} ms behind", lag)
        if active_calls >= self.max_active_calls:
            self._refuse(f"{active_calls} calls in progress (calls.max_active_calls)", 5.0)
        if not self._rate.take("site"):
            self._refuse("call setup rate over calls.max_setups_per_s", self._rate.retry_after("site"))

    def _refuse(self, why: str, retry_after: float) -> None:
        self.refused += 1
        raise TooBusy(why, retry_after)
