"""KeyedLock: one holder per key at a time, and no entry left behind (also when a waiter is cancelled)."""

from __future__ import annotations

import asyncio

from broker.mqtt.keyed_lock import KeyedLock


async def test_holders_of_one_key_run_one_at_a_time_and_other_keys_freely():
    """Two holders of key `a` never overlap, while a holder of `b` runs meanwhile; nothing is kept after."""
    locks = KeyedLock()
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []

    async def hold(key: str, name: str) -> None:
        async with locks.hold(key):
            inside.append(name)
            overlaps.append(tuple(inside))
            await asyncio.sleep(0.01)
            inside.remove(name)

    await asyncio.gather(hold("a", "a1"), hold("a", "a2"), hold("b", "b1"))
    assert not [o for o in overlaps if "a1" in o and "a2" in o]
    assert [o for o in overlaps if "b1" in o and len(o) > 1], "a different key was serialized too"
    assert len(locks) == 0


async def test_a_cancelled_waiter_leaves_no_entry():
    """A waiter cancelled while the key is held frees its share; the entry goes with the last holder."""
    locks = KeyedLock()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("k"):
            await release.wait()

    async def waiter() -> None:
        async with locks.hold("k"):
            raise AssertionError("the cancelled waiter got the lock")

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    second = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    assert locks.held("k")
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    release.set()
    await first
    assert len(locks) == 0
