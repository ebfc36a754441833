"""`asyncio.Queue` and `asyncio.Event` that allocate nothing until used, for the engine's per-connection objects.

amqtt's `Session` constructor builds two queues per connection (`retained_messages`, the offline queue, and
`delivered_message_queue`), each with four deques (~3.3 KB). On this broker they stay empty for most
connections' whole life (delivery goes through an Outlet). The engine's own session (`session.EngineSession`)
holds `LazyQueue`s instead, which keep the `asyncio.Queue` API and behaviour and create a deque the first time
something touches them.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, TypeVar

__all__ = ["LazyEvent", "LazyQueue"]

T = TypeVar("T")
_LAZY = frozenset({"_queue", "_getters", "_putters", "_finished"})


class LazyQueue(asyncio.Queue[T]):
    # asyncio.Queue.__init__ minus the allocations; `__getattr__` only runs for a missing attribute.
    def __init__(self, maxsize: int = 0) -> None:
        self._maxsize = maxsize
        self._unfinished_tasks = 0
        self._made = False  # a flag, not `__dict__` lookups: reading `__dict__` would materialize it (~250 B)

    def __getattr__(self, name: str) -> Any:
        if name not in _LAZY:
            raise AttributeError(name)
        if name == "_queue":
            self._init(self._maxsize)
            self._made = True
        elif name == "_finished":
            finished = LazyEvent()
            if not self._unfinished_tasks:
                finished.set()
            self._finished = finished
        else:
            setattr(self, name, collections.deque())
        return object.__getattribute__(self, name)

    # The read-only checks amqtt calls on every session answer without allocating.
    def qsize(self) -> int:
        return len(self._queue) if self._made else 0

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return 0 < self._maxsize <= self.qsize()

    def _format(self) -> str:
        return f"maxsize={self._maxsize!r} qsize={self.qsize()}"


class LazyEvent(asyncio.Event):
    """`asyncio.Event` whose waiter deque (~700 B) exists only once somebody waits."""

    def __init__(self) -> None:
        self._value = False
        self._made = False

    def __getattr__(self, name: str) -> Any:
        if name != "_waiters":
            raise AttributeError(name)
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._made = True
        return self._waiters

    def set(self) -> None:
        if self._made:
            super().set()
        else:
            self._value = True

