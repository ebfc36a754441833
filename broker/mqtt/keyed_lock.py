"""One `asyncio.Lock` per key, kept only while someone holds or waits for it."""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["KeyedLock"]


class KeyedLock:
    """`async with locks.hold(key):` serializes the holders of one key; other keys run freely.

    An entry lives only while a holder or a waiter needs it, so a flood of distinct keys (client ids
    chosen by clients) leaves nothing behind. Uncontended, entering does not yield to the loop.
    """

    def __init__(self) -> None:
        self._locks: dict[str, _Entry] = {}

    def __len__(self) -> int:
        """Keys currently held or waited for."""
        return len(self._locks)

    def held(self, key: str) -> bool:
        entry = self._locks.get(key)
        return entry is not None and entry.lock.locked()

    def hold(self, key: str) -> _Hold:
        return _Hold(self._locks, key)


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _Hold:
    """The context manager `KeyedLock.hold` returns (a class, not a generator: it is on the CONNECT path)."""

    __slots__ = ("entry", "key", "locks")

    def __init__(self, locks: dict[str, _Entry], key: str) -> None:
        self.locks = locks
        self.key = key
        entry = locks.get(key)
        if entry is None:
            entry = locks[key] = _Entry()
        entry.users += 1
        self.entry = entry

    async def __aenter__(self) -> None:
        try:
            await self.entry.lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.entry.lock.release()
        self._leave()

    def _leave(self) -> None:
        self.entry.users -= 1
        if not self.entry.users:
            del self.locks[self.key]
