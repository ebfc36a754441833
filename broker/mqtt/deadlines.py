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
        self._heap: list[tuple[float, int]] = []  # (deadline, token)
        # token -> the connection watched under it. Strong references (the compiled build's connections take no
        # weak ones), so a connection that ends says so (`forget`): it is not kept until its deadline.
        self._items: dict[int, Expiring] = {}
        self._seq = itertools.count(1)  # token 0: never watched
        self._task: asyncio.Task[None] | None = None

    def watch(self, item: Expiring) -> None:
        """Start watching `item`, or re-watch it after its deadline moved earlier (a later one is found)."""
        deadline = item.deadline
        if deadline is None:
            return
        items = self._items
        items.pop(item.watch_token, None)  # its older entry, if any, is stale now
        item.watch_token = token = next(self._seq)
        items[token] = item
        heapq.heappush(self._heap, (deadline, token))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def forget(self, item: Expiring) -> None:
        """`item` has ended: drop it now (its heap entry goes at the next compaction or when it comes due)."""
        self._items.pop(item.watch_token, None)

    def __len__(self) -> int:
        """Connections watched now (closed or forgotten ones not counted)."""
        return sum(1 for item in self._items.values() if item.deadline is not None)

    def _compact(self) -> None:
        # A closed connection's entry would otherwise stay until its deadline (keepalive x 1.5, up to
        # hours): under reconnect churn the heap would grow with the connect rate times that.
        items = self._items
        for token in [token for token, item in items.items() if item.deadline is None]:
            del items[token]
        self._heap[:] = [entry for entry in self._heap if entry[1] in items]
        heapq.heapify(self._heap)

    async def _run(self) -> None:
        heap, items = self._heap, self._items
        ticks = 0
        while heap:
            await asyncio.sleep(self.tick_s)
            ticks += 1
            if ticks % self.compact_every == 0:
                self._compact()
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, token = heapq.heappop(heap)
                item = items.get(token)
                if item is None:
                    continue
                deadline = item.deadline
                if deadline is None:
                    del items[token]
                elif deadline > now:
                    heapq.heappush(heap, (deadline, token))
                elif item.expire():
                    items.pop(token, None)
                else:
                    heapq.heappush(heap, (now + self.tick_s, token))


_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DeadlineSweeper] = weakref.WeakKeyDictionary()


def loop_sweeper() -> DeadlineSweeper:
    """The running loop's sweeper (one per loop: every connection's CONNECT and keepalive deadline)."""
    loop = asyncio.get_running_loop()
    sweeper = _SWEEPERS.get(loop)
    if sweeper is None:
        sweeper = _SWEEPERS[loop] = DeadlineSweeper()
    return sweeper
