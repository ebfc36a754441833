"""QoS 2 across a restart: a QoS 2 message past PUBREC survives a SIGTERM restart and is delivered exactly once."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.support.process import ProcServer
from tests.support.raw_mqtt import PUBCOMP, PUBREC, Raw, publish


async def session(port: int, client_id: str) -> tuple[Raw, int]:
    """A persistent-session raw client after CONNACK 0; returns it and the session-present flag."""
    raw = await Raw.connected(port, client_id, clean=False)
    return raw, int(bool(raw.session_present))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_qos2_message_past_pubrec_survives_restart(tmp_path: Path, how: str):
    """PUBLISH -> PUBREC, SIGTERM (or kill -9), restart, PUBREL -> PUBCOMP; the subscriber gets it once."""
    server = ProcServer(tmp_path).start()
    try:
        sub, _ = await session(server.mqtt_port, "q2r-sub")
        await sub.subscribe([("q2r/topic", 1)])
        pub, _ = await session(server.mqtt_port, "q2r-pub")
        await pub.send(publish("q2r/topic", b"survives", qos=2, packet_id=11))
        assert await pub.read_packet() == (PUBREC, struct.pack("!H", 11))
        await pub.send(publish("q2r/topic", b"resent-later", qos=2, packet_id=12))
        assert await pub.read_packet() == (PUBREC, struct.pack("!H", 12))
        assert await sub.publishes(0.3) == []
        if how == "sigterm":
            assert server.stop() == 0
        else:
            server.kill()
        await pub.close()
        await sub.close()

        server.start()
        sub, present = await session(server.mqtt_port, "q2r-sub")
        assert present == 1
        pub, present = await session(server.mqtt_port, "q2r-pub")
        assert present == 1
        # the client may re-send the PUBLISH it holds (DUP): the broker must not take it as a new message
        await pub.send(publish("q2r/topic", b"resent-later", qos=2, packet_id=12, dup=True))
        assert await pub.read_packet() == (PUBREC, struct.pack("!H", 12))
        for pid in (11, 12):
            await pub.pubrel(pid)
            assert await pub.read_packet() == (PUBCOMP, struct.pack("!H", pid))
        await pub.pubrel(11)  # released twice: answered again, delivered once
        assert await pub.read_packet() == (PUBCOMP, struct.pack("!H", 11))
        assert await sub.publishes(1.0) == [b"survives", b"resent-later"]
        await pub.close()
        await sub.close()
    finally:
        server.stop()


@pytest.mark.slow
async def test_released_message_is_not_held_after_restart(tmp_path: Path):
    """A QoS 2 flow completed before the restart leaves nothing stored: no re-delivery afterwards."""
    server = ProcServer(tmp_path).start()
    try:
        sub, _ = await session(server.mqtt_port, "q2d-sub")
        await sub.subscribe([("q2d/topic", 1)])
        pub, _ = await session(server.mqtt_port, "q2d-pub")
        await pub.send(publish("q2d/topic", b"once", qos=2, packet_id=5))
        assert await pub.read_packet() == (PUBREC, struct.pack("!H", 5))
        await pub.pubrel(5)
        assert await pub.read_packet() == (PUBCOMP, struct.pack("!H", 5))
        assert await sub.publishes(0.5) == [b"once"]
        assert server.stop() == 0
        await pub.close()
        await sub.close()

        server.start()
        sub, _ = await session(server.mqtt_port, "q2d-sub")
        pub, _ = await session(server.mqtt_port, "q2d-pub")
        await pub.send(publish("q2d/topic", b"once", qos=2, packet_id=5, dup=True))  # id 5 is free again
        assert await pub.read_packet() == (PUBREC, struct.pack("!H", 5))
        await pub.pubrel(5)
        assert await pub.read_packet() == (PUBCOMP, struct.pack("!H", 5))
        assert await sub.publishes(0.5) == [b"once"]  # the new message, and nothing from before
        await pub.close()
        await sub.close()
    finally:
        server.stop()
