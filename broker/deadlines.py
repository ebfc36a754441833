"""One task watches every connection's read deadline (CONNECT timeout, keepalive x factor).

Replaces an `asyncio.timeout` around each socket read: that created and cancelled a Timeout and a
timer handle for every chunk received, and kept one pair alive per idle connection. Here a
connection only moves its deadline (a float); a heap holds one entry per connection, and an entry
whose deadline moved on is pushed back when it comes due, so a tick costs only the entries due.
Mosquitto checks keepalive the same way, from its main loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import weakref
from typing import Protocol

__all__ = ["DeadlineSweeper", "Expiring"]


class Expiring(Protocol):
    watch_token: int  # set by `watch`; an entry with an older token is stale
    @property
    def deadline(self) -> float | None:
        """`time.monotonic()` value after which the connection expires; None: not watched (closed)."""
        ...

    def expire(self) -> bool:
        """The deadline passed: end the connection. False if it cannot now (asked again next tick)."""
        ...


class DeadlineSweeper:
    def __init__(self, tick_s: float = 0.1) -> None:
        self.tick_s = tick_s
        # weak: a closed connection is not kept alive until its (possibly hour-long) deadline
        self._heap: list[tuple[float, int, weakref.ref[Expiring]]] = []
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def watch(self, item: Expiring) -> None:
        """Start watching `item`, or re-watch it after its deadline moved earlier (a later one is found)."""
        deadline = item.deadline
        if deadline is None:
            return
        item.watch_token = token = next(self._seq)
        heapq.heappush(self._heap, (deadline, token, weakref.ref(item)))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def __len__(self) -> int:
        return len(self._heap)

    async def _run(self) -> None:
        heap = self._heap
        while heap:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, seq, ref = heapq.heappop(heap)
                item = ref()
                if item is None or item.watch_token != seq:
                    continue
                deadline = item.deadline
                if deadline is None:
                    continue
                if deadline > now:
                    heapq.heappush(heap, (deadline, seq, ref))
                elif not item.expire():
                    heapq.heappush(heap, (now + self.tick_s, seq, ref))
