"""Issue 10 item 5: a QoS 2 message past PUBREC survives a SIGTERM restart and is delivered exactly once."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.proc_server import ProcServer
from tests.security_helpers import Raw, connect, packet, publish, subscribe
from tests.test_qos2 import PUBCOMP, PUBREC, publishes, pubrel


async def session(port: int, client_id: str) -> tuple[Raw, int]:
    """A persistent-session raw client after CONNACK 0; returns it and the session-present flag."""
    raw = await Raw.open(port)
    await raw.send(connect(client_id, clean=False))
    got = await raw.read_packet()
    assert got is not None and got[0] == 0x20 and got[1][1] == 0, got
    return raw, got[1][0] & 1


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_qos2_message_past_pubrec_survives_restart(tmp_path: Path, how: str):
    """PUBLISH -> PUBREC, SIGTERM (or kill -9), restart, PUBREL -> PUBCOMP; the subscriber gets it once."""
    server = ProcServer(tmp_path).start()
    try:
        sub, _ = await session(server.mqtt_port, "q2r-sub")
        await sub.send(subscribe([("q2r/topic", 1)]))
        assert (await sub.read_packet())[0] == 0x90  # type: ignore[index]
        pub, _ = await session(server.mqtt_port, "q2r-pub")
        await pub.send(publish("q2r/topic", b"survives", qos=2, packet_id=11))
        assert await pub.read_packet() == (PUBREC, struct.pack("!H", 11))
        await pub.send(publish("q2r/topic", b"resent-later", qos=2, packet_id=12))
        assert await pub.read_packet() == (PUBREC, struct.pack("!H", 12))
        assert await publishes(sub, 0.3) == []
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
        await pub.send(publish("q2r/topic", b"resent-later", qos=2, packet_id=12, flags=0x0C))
        assert await pub.read_packet() == (PUBREC, struct.pack("!H", 12))
        for pid in (11, 12):
            await pub.send(pubrel(pid))
            assert await pub.read_packet() == (PUBCOMP, struct.pack("!H", pid))
        await pub.send(pubrel(11))  # released twice: answered again, delivered once
        assert await pub.read_packet() == (PUBCOMP, struct.pack("!H", 11))
        assert await publishes(sub, 1.0) == [b"survives", b"resent-later"]
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
        await sub.send(subscribe([("q2d/topic", 1)]))
        assert (await sub.read_packet())[0] == 0x90  # type: ignore[index]
        pub, _ = await session(server.mqtt_port, "q2d-pub")
        await pub.send(publish("q2d/topic", b"once", qos=2, packet_id=5))
        assert await pub.read_packet() == (PUBREC, struct.pack("!H", 5))
        await pub.send(packet(0x62, struct.pack("!H", 5)))
        assert await pub.read_packet() == (PUBCOMP, struct.pack("!H", 5))
        assert await publishes(sub, 0.5) == [b"once"]
        assert server.stop() == 0
        await pub.close()
        await sub.close()

        server.start()
        sub, _ = await session(server.mqtt_port, "q2d-sub")
        pub, _ = await session(server.mqtt_port, "q2d-pub")
        await pub.send(publish("q2d/topic", b"once", qos=2, packet_id=5, flags=0x0C))  # id 5 is free again
        assert await pub.read_packet() == (PUBREC, struct.pack("!H", 5))
        await pub.send(pubrel(5))
        assert await pub.read_packet() == (PUBCOMP, struct.pack("!H", 5))
        assert await publishes(sub, 0.5) == [b"once"]  # the new message, and nothing from before
        await pub.close()
        await sub.close()
    finally:
        server.stop()
