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

__all__ = ["DeadlineSweeper", "Expiring", "loop_sweeper"]


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
    def __init__(self, tick_s: float = 0.1, compact_every_s: float = 10.0) -> None:
        self.tick_s = tick_s
        self.compact_every = max(1, round(compact_every_s / tick_s))
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
        """Connections watched now (entries of closed or re-watched connections not counted)."""
        return sum(1 for entry in self._heap if _live(entry))

    def _compact(self) -> None:
        # A closed connection's entry would otherwise stay until its deadline (keepalive x 1.5, up to
        # hours): under reconnect churn the heap would grow with the connect rate times that.
        self._heap[:] = [entry for entry in self._heap if _live(entry)]
        heapq.heapify(self._heap)

    async def _run(self) -> None:
        heap = self._heap
        ticks = 0
        while heap:
            await asyncio.sleep(self.tick_s)
            ticks += 1
            if ticks % self.compact_every == 0:
                self._compact()
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


def _live(entry: tuple[float, int, weakref.ref[Expiring]]) -> bool:
    item = entry[2]()
    return item is not None and item.watch_token == entry[1] and item.deadline is not None


_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DeadlineSweeper] = weakref.WeakKeyDictionary()


def loop_sweeper() -> DeadlineSweeper:
    """The running loop's sweeper (one per loop: every connection's CONNECT and keepalive deadline)."""
    loop = asyncio.get_running_loop()
    sweeper = _SWEEPERS.get(loop)
    if sweeper is None:
        sweeper = _SWEEPERS[loop] = DeadlineSweeper()
    return sweeper
