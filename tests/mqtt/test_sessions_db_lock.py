"""A locked sessions.db: another process holding sessions.db locked must not stall the loop per offline session,
and the messages queued meanwhile reach sessions.db once the lock is released (they survive a restart)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from broker.mqtt.message import RetainedMessage
from broker.mqtt.session_db import SessionDB
from broker.write_gate import MAX_PAUSE_S, WriteGate
from tests.e2e.test_locked_db import HOLD_LOCK, Clock
from tests.support.process import ServerProcess
from tests.support.raw_mqtt import PUBACK, Raw, parse_publish

SESSIONS = 40
LOCK_S = 4.0
MAX_STALL_S = 1.0


def _healthz_s(port: int) -> float:
    t0 = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        assert r.status == 200
    return time.monotonic() - t0


def test_writes_made_while_locked_are_kept_and_written_in_order_after(tmp_path: Path) -> None:
    """Writes failing on a real lock are kept (a queued row and its deletion included) and written, in order,
    by the first probe after the lock is gone; meanwhile sqlite is not asked."""
    db = SessionDB(tmp_path / "sessions.db", busy_timeout_ms=0)
    clock = Clock()
    db.gate = WriteGate("sessions.db", clock=clock)
    other = sqlite3.connect(tmp_path / "sessions.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    msg = RetainedMessage("feed/a", b"payload", 1)
    first = db.queue_put("c1", msg)  # fails on the lock: the gate closes, the write is kept
    second = db.queue_put("c1", msg)
    db.queue_del(first)
    db.touch("c1", None)
    assert not db.gate.is_open
    assert len(db._kept) == 4
    assert not db.flush()  # the pause has not ended: not tried
    clock.now += MAX_PAUSE_S
    assert not db.flush()  # still locked: kept
    other.execute("ROLLBACK")
    clock.now += MAX_PAUSE_S
    assert db.flush()
    assert db.gate.is_open
    assert not db._kept
    assert [r[0] for r in db.conn.execute("SELECT id FROM mqtt_queue")] == [second]
    assert [s.client_id for s in db.load()] == ["c1"]
    other.close()
    db.close()


@pytest.mark.slow
async def test_a_locked_sessions_db_neither_stalls_the_loop_nor_loses_queued_messages(tmp_path: Path) -> None:
    """A QoS 1 publish to 40 offline persistent sessions while sessions.db is locked: PUBACK and /healthz
    within 1 s; after the lock is gone and a restart, every session still gets the message."""
    server = ServerProcess(tmp_path, {"site": {"households": []}}).start()
    try:
        for i in range(SESSIONS):
            raw = await Raw.connected(server.mqtt_port, f"offline/{i}", clean=False)
            await raw.subscribe([("feed/#", 1)])
            await raw.close(disconnect=True)
        publisher = await Raw.connected(server.mqtt_port, "publisher")
        holder = await asyncio.create_subprocess_exec(sys.executable, "-c", HOLD_LOCK,
                                                      str(server.data_dir / "sessions.db"), str(LOCK_S),
                                                      stdout=asyncio.subprocess.PIPE)
        assert holder.stdout is not None
        assert (await holder.stdout.readline()).strip() == b"locked"
        t0 = time.monotonic()
        await publisher.publish("feed/news", b"queued while locked", qos=1, packet_id=7)
        got = await publisher.read_packet(10)
        puback_s = time.monotonic() - t0
        assert got is not None
        assert got[0] == PUBACK
        healthz_s = await asyncio.to_thread(_healthz_s, server.http_port)
        assert await asyncio.wait_for(holder.wait(), LOCK_S + 5) == 0
        await asyncio.sleep(3.0)  # the gate's next probe writes what was kept meanwhile
        await publisher.close(disconnect=True)
        assert puback_s < MAX_STALL_S, f"PUBACK took {puback_s:.2f} s while sessions.db was locked"
        assert healthz_s < MAX_STALL_S, f"/healthz took {healthz_s:.2f} s while sessions.db was locked"

        server.stop()
        server.start()
        missing = []
        for i in range(SESSIONS):
            raw = await Raw.connected(server.mqtt_port, f"offline/{i}", clean=False)
            got = await raw.read_packet(3)
            if got is None or got[0] & 0xF0 != 0x30 or parse_publish(*got).payload != b"queued while locked":
                missing.append(i)
            await raw.close(disconnect=True)
        assert not missing, f"{len(missing)} of {SESSIONS} sessions lost the message queued during the lock"
    finally:
        server.stop()
