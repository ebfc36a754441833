"""DeadlineSweeper: one task expiring connections whose read deadline passed."""

from __future__ import annotations

import asyncio
import sys
import time

from broker.mqtt.deadlines import DeadlineSweeper


class Conn:
    def __init__(self, in_s: float, busy: int = 0) -> None:
        self.deadline: float | None = time.monotonic() + in_s
        self.watch_token = 0
        self.expired_at: float | None = None
        self.busy = busy  # how many times expire() answers "not now"

    def expire(self) -> bool:
        if self.busy:
            self.busy -= 1
            return False
        self.expired_at = time.monotonic()
        self.deadline = None
        return True


async def test_due_connections_expire_and_moved_deadlines_are_honoured() -> None:
    sweeper = DeadlineSweeper(tick_s=0.02)
    soon, later, extended = Conn(0.05), Conn(0.4), Conn(0.05)
    for conn in (soon, later, extended):
        sweeper.watch(conn)
    t0 = time.monotonic()
    await asyncio.sleep(0.02)
    extended.deadline = time.monotonic() + 0.3  # traffic arrived: the deadline moves on
    await asyncio.sleep(0.15)
    assert soon.expired_at is not None
    assert soon.expired_at - t0 < 0.15
    assert later.expired_at is None
    assert extended.expired_at is None
    await asyncio.sleep(0.35)
    assert later.expired_at is not None
    assert extended.expired_at is not None
    assert len(sweeper) == 0


async def test_an_earlier_deadline_is_rewatched_and_the_stale_entry_dropped() -> None:
    sweeper = DeadlineSweeper(tick_s=0.02)
    conn = Conn(5.0)  # CONNECT timeout
    sweeper.watch(conn)
    conn.deadline = time.monotonic() + 0.05  # keepalive, shorter
    sweeper.watch(conn)
    await asyncio.sleep(0.2)
    assert conn.expired_at is not None
    assert len(sweeper) == 0
    assert len(sweeper._heap) == 1


async def test_a_busy_connection_is_asked_again_and_an_ended_one_is_forgotten() -> None:
    sweeper = DeadlineSweeper(tick_s=0.02)
    busy, ended = Conn(0.02, busy=2), Conn(0.02)
    sweeper.watch(busy)
    sweeper.watch(ended)
    ended.deadline = None  # the connection ended (`MqttProtocol.connection_lost`) ...
    sweeper.forget(ended)  # ... and said so: the sweeper no longer holds it
    assert sys.getrefcount(ended) == 2  # the local name and getrefcount's argument: nothing else
    await asyncio.sleep(0.2)
    assert busy.expired_at is not None
    assert busy.busy == 0
    assert ended.expired_at is None
    assert len(sweeper) == 0


async def test_entries_of_closed_connections_are_compacted_away() -> None:
    """A closed connection's entry (deadline None) leaves the heap at the next compaction, not at its
    (possibly hour-long) deadline."""
    sweeper = DeadlineSweeper(tick_s=0.01, compact_every_s=0.05)
    conns = [Conn(3600.0) for _ in range(20)]
    for conn in conns:
        sweeper.watch(conn)
    keep = conns[0]
    for conn in conns[1:]:
        conn.deadline = None  # closed
    assert len(sweeper) == 1
    await asyncio.sleep(0.2)
    assert len(sweeper._heap) == 1
    assert sweeper._items[sweeper._heap[0][1]] is keep
