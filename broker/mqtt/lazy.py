"""`asyncio.Event` that allocates nothing until somebody waits, for the engine's per-connection objects.

`live.Live.done` is one per registered connection and is usually set without anybody waiting on it.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

__all__ = ["LazyEvent"]


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
