"""Per-principal quotas: one principal's persistent sessions are capped in number and in the bytes they hold
(QoS 2 awaiting PUBREL, offline queues), in memory and in sessions.db (the server as a subprocess)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tests.support.process import ProcServer
from tests.support.raw_mqtt import PUBACK, PUBREC, Raw, connack5, connect, connect5, publish, publish5

SESSIONS = 24  # client ids tried; the cap is limits.max_sessions_per_principal (default 8)
CAP = 8
WINDOW = 32  # QoS 2 messages held per session (limits.max_inflight_messages)
PAYLOAD = b"\xa5" * 60 * 1024
MIB = 1024 * 1024
HELD_QUOTA = 4 * MIB  # limits.max_held_bytes_per_principal
QUEUED_QUOTA = 16 * MIB  # limits.max_queued_bytes_per_principal
UNAVAILABLE, QUOTA_EXCEEDED = 3, 0x97


def stored_bytes(data_dir: Path, table: str) -> int:
    with sqlite3.connect(data_dir / "sessions.db") as db:
        return int(db.execute(f"SELECT COALESCE(SUM(length(payload)), 0) FROM {table}").fetchone()[0])


async def hold_window(port: int, client_id: str, token: str) -> int | None:
    """CONNECT a persistent session, send WINDOW unreleased 60 KB QoS 2 PUBLISHes, vanish; the CONNACK code."""
    raw = await Raw.open(port)
    code = await raw.connack(connect(client_id, "2", token, clean=False))
    if code == 0:
        for packet_id in range(1, WINDOW + 1):
            raw.writer.write(publish("users/2/commands", PAYLOAD, qos=2, packet_id=packet_id))
        recs = 0
        while recs < WINDOW and (got := await raw.read_packet(10)) is not None:
            recs += got[0] == PUBREC
        assert recs == WINDOW  # 3.1.1: every PUBLISH is acknowledged, whether held or dropped over quota
    raw.abort()
    return code


@pytest.mark.slow
async def test_one_principal_cannot_fill_memory_and_disk_with_persistent_sessions(tmp_path: Path) -> None:
    """24 persistent client ids of one resident, each holding 32 x 60 KB QoS 2 unreleased: only 8 sessions are
    accepted (CONNACK 3 after), at most 4 MiB is held (memory and sessions.db), RSS grows < 40 MB."""
    server = ProcServer(tmp_path).start()
    try:
        token = server.token("residents", "2")
        await asyncio.sleep(0.5)
        base = server.rss_mb()
        codes = [await hold_window(server.mqtt_port, f"resident-2/h{i}", token) for i in range(SESSIONS)]
        await asyncio.sleep(1.0)
        growth = server.rss_mb() - base
        assert codes == [0] * CAP + [UNAVAILABLE] * (SESSIONS - CAP), codes
        held = stored_bytes(server.data_dir, "mqtt_incoming")
        assert held <= HELD_QUOTA, f"{held / MIB:.1f} MiB of QoS 2 held for one principal"
        assert growth < 40, f"RSS grew {growth:.0f} MB"
        # the MQTT 5 answers: CONNACK 0x97 past the cap, PUBREC 0x97 past the held-bytes quota
        raw = await Raw.open(server.mqtt_port)
        got = await connack5(raw, connect5("resident-2/v5", clean=False, properties=b"\x05\x11\x00\x00\x0e\x10",
                                           username="2", password=token.encode()))
        assert got is not None
        assert got[0] == QUOTA_EXCEEDED
        raw.abort()
    finally:
        server.stop()


@pytest.mark.slow
async def test_offline_queues_of_one_principal_are_bounded_in_bytes(tmp_path: Path) -> None:
    """8 offline sessions subscribed to a topic, 200 x 60 KB QoS 1 published there: every publish is
    acknowledged, and the principal's offline queues hold at most 16 MiB (not 8 x 12 MB)."""
    server = ProcServer(tmp_path).start()
    try:
        token = server.token("residents", "2")
        for i in range(CAP - 1):
            raw = await Raw.open(server.mqtt_port)
            assert await raw.connack(connect(f"resident-2/q{i}", "2", token, clean=False)) == 0
            await raw.subscribe([("users/2/commands", 1)])
            await raw.close(disconnect=True)
        publisher = await Raw.open(server.mqtt_port)
        assert await publisher.connack(connect("resident-2", "2", token)) == 0
        acks = 0
        for packet_id in range(1, 201):
            publisher.writer.write(publish("users/2/commands", PAYLOAD, qos=1, packet_id=packet_id))
            if packet_id % 20 == 0:
                while acks < packet_id and (got := await publisher.read_packet(10)) is not None:
                    acks += got[0] == PUBACK
        assert acks == 200
        await publisher.close(disconnect=True)
        await asyncio.sleep(0.5)
        queued = stored_bytes(server.data_dir, "mqtt_queue")
        assert queued <= QUEUED_QUOTA, f"{queued / MIB:.1f} MiB queued for one principal"
        assert queued >= QUEUED_QUOTA - 2 * len(PAYLOAD)  # up to the quota, not less
    finally:
        server.stop()


@pytest.mark.slow
async def test_mqtt5_qos2_over_the_held_quota_gets_pubrec_quota_exceeded(tmp_path: Path) -> None:
    """MQTT 5 persistent sessions of one principal: QoS 2 PUBLISHes past 4 MiB held get PUBREC 0x97."""
    server = ProcServer(tmp_path).start()
    try:
        token = server.token("residents", "2")
        codes = []
        for n in range(3):  # three sessions of one principal, 32 x 60 KB each: the third goes over 4 MiB
            raw = await Raw.open(server.mqtt_port)
            got = await connack5(raw, connect5(f"resident-2/p{n}", clean=False, username="2",
                                               password=token.encode(), properties=b"\x05\x11\x00\x00\x0e\x10"))
            assert got is not None
            assert got[0] == 0
            for packet_id in range(1, WINDOW + 1):
                raw.writer.write(publish5("users/2/commands", PAYLOAD, qos=2, packet_id=packet_id))
            while len(codes) < (n + 1) * WINDOW and (got := await raw.read_packet(10)) is not None:
                if got[0] == PUBREC:
                    codes.append(got[1][2] if len(got[1]) > 2 else 0)
            raw.abort()
        held = HELD_QUOTA // len(PAYLOAD)
        assert codes == [0] * held + [QUOTA_EXCEEDED] * (3 * WINDOW - held), codes
    finally:
        server.stop()


@pytest.mark.slow
async def test_unacknowledged_deliveries_of_one_principal_are_bounded_in_bytes(tmp_path: Path) -> None:
    """4 persistent sessions of one resident read 120 x 60 KB QoS 1 messages each and never PUBACK: what is in
    flight for the principal stays within 16 MiB (not 4 x the 100-message window), on disk too."""
    server = ProcServer(tmp_path).start()
    try:
        token = server.token("residents", "2")
        readers = []

        async def read_all(raw: Raw) -> None:
            while await raw.read_packet(None) is not None:
                pass

        for i in range(4):
            raw = await Raw.open(server.mqtt_port)
            assert await raw.connack(connect(f"resident-2/s{i}", "2", token, clean=False)) == 0
            await raw.subscribe([("users/2/commands", 1)])
            readers.append((raw, asyncio.create_task(read_all(raw))))
        publisher = await Raw.open(server.mqtt_port)
        assert await publisher.connack(connect("resident-2", "2", token)) == 0
        for packet_id in range(1, 121):
            publisher.writer.write(publish("users/2/commands", PAYLOAD, qos=1, packet_id=packet_id))
        acks = 0
        while acks < 120 and (got := await publisher.read_packet(10)) is not None:
            acks += got[0] == PUBACK
        assert acks == 120
        await asyncio.sleep(1.0)
        inflight = stored_bytes(server.data_dir, "mqtt_inflight")
        for raw, task in readers:
            task.cancel()
            raw.abort()
        assert inflight <= 16 * MIB, f"{inflight / MIB:.1f} MiB in flight for one principal"
        assert inflight >= 16 * MIB - 4 * len(PAYLOAD)  # the quota is used, not undercut
    finally:
        server.stop()
