"""A reader's turn on the event loop: how long one connection may handle buffered packets before the others.

A reader that finds whole packets already buffered handles them without awaiting anything, so a client that
pipelines thousands of packets would keep the loop to itself (every other connection, REST and timers wait).
`Turn.over()` is asked once per packet; every `CHECK_EVERY` packets it looks at the clock, and once the
connection has had the loop for `SLICE_S` the reader yields (`await asyncio.sleep(0)`): the other ready
connections run, then it continues. Cheap packets (a QoS 0 PUBLISH to nobody) rarely reach the slice, so
the throughput of a well-behaved burst is unchanged.
"""

from __future__ import annotations

import asyncio

__all__ = ["CHECK_EVERY", "SLICE_S", "Turn"]

CHECK_EVERY = 32  # packets between two looks at the clock
SLICE_S = 0.002  # the loop time one connection may take before it yields


class Turn:
    """One reader's slice of the loop."""

    __slots__ = ("_left", "_loop", "_since")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._left = CHECK_EVERY
        self._since = self._loop.time()

    def over(self) -> bool:
        """True when the reader has had the loop for `SLICE_S` and should yield before the next packet."""
        self._left -= 1
        if self._left:
            return False
        self._left = CHECK_EVERY
        now = self._loop.time()
        if now - self._since < SLICE_S:
            return False
        self._since = now
        return True

    async def yield_now(self) -> None:
        """Let every other ready callback run, then start a new slice."""
        await asyncio.sleep(0)
        self._since = self._loop.time()
