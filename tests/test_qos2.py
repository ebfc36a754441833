"""Incoming QoS 2 (MQTT 3.1.1 §4.3.3): ACL at PUBLISH, a bounded window, PUBREL always answered, once-only."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from tests.conftest import Harness
from tests.security_helpers import Raw, connect, packet, publish, secure_harness, subscribe

PUBREC, PUBREL, PUBCOMP, PUBLISH = 0x50, 0x62, 0x70, 0x30


def pubrel(packet_id: int) -> bytes:
    return packet(PUBREL, struct.pack("!H", packet_id))


def held(h: Harness, client_id: str) -> dict[int, Any]:
    """The incoming QoS 2 messages the broker holds for `client_id` (awaiting PUBREL)."""
    entry = h.server.broker._sessions.get(client_id)
    return dict(entry[0].inflight_in) if entry is not None else {}


async def connected(h: Harness, client_id: str, clean: bool = True, **kw: Any) -> tuple[Raw, int]:
    """A raw client after CONNACK 0; returns it and the session-present flag."""
    raw = await Raw.open(h.server.mqtt_port)
    await raw.send(connect(client_id, clean=clean, **kw))
    got = await raw.read_packet()
    assert got is not None and got[0] == 0x20 and got[1][1] == 0, got
    return raw, got[1][0] & 1


async def subscriber(h: Harness, client_id: str, topic: str, qos: int = 2, **kw: Any) -> Raw:
    raw, _ = await connected(h, client_id, **kw)
    await raw.send(subscribe([(topic, qos)]))
    got = await raw.read_packet()
    assert got is not None and got[0] == 0x90, got
    return raw


async def publishes(raw: Raw, timeout: float = 0.5) -> list[bytes]:
    """Payloads of the PUBLISHes `raw` receives until it is quiet for `timeout` (QoS 1/2 acknowledged)."""
    out: list[bytes] = []
    while (got := await quiet_read(raw, timeout)) is not None:
        first, body = got
        if first & 0xF0 != PUBLISH:
            continue
        qos = (first >> 1) & 3
        tlen = struct.unpack("!H", body[:2])[0]
        pos = 2 + tlen + (2 if qos else 0)
        out.append(body[pos:])
        if qos == 1:
            await raw.send(packet(0x40, body[2 + tlen:pos]))
        elif qos == 2:
            await raw.send(packet(0x50, body[2 + tlen:pos]))
            await quiet_read(raw)  # PUBREL
            await raw.send(packet(0x70, body[2 + tlen:pos]))
    return out


async def quiet_read(raw: Raw, timeout: float = 0.5) -> tuple[int, bytes] | None:
    try:
        return await raw.read_packet(timeout)
    except TimeoutError:
        return None


async def test_pubrel_for_unknown_packet_id_gets_pubcomp(harness):
    """A PUBREL the broker has no message for is still answered with PUBCOMP [MQTT-4.3.3-2, §4.3.3]."""
    raw, _ = await connected(harness, "q2-unknown")
    await raw.send(pubrel(4242))
    assert await quiet_read(raw, 2.0) == (PUBCOMP, struct.pack("!H", 4242))
    await raw.close()


async def test_message_is_routed_once_at_pubrel(harness):
    """PUBLISH -> PUBREC (held, not routed); a DUP re-send is PUBREC'd again; PUBREL routes it once -> PUBCOMP."""
    sub = await subscriber(harness, "q2-sub", "q2/once")
    pub, _ = await connected(harness, "q2-pub")
    await pub.send(publish("q2/once", b"hello", qos=2, packet_id=7))
    assert await pub.read_packet() == (PUBREC, struct.pack("!H", 7))
    assert await publishes(sub, 0.3) == []  # method B: nothing goes out before PUBREL
    await pub.send(publish("q2/once", b"hello", qos=2, packet_id=7, flags=0x08 | 0x04))  # DUP
    assert await pub.read_packet() == (PUBREC, struct.pack("!H", 7))
    assert list(held(harness, "q2-pub")) == [7]
    await pub.send(pubrel(7))
    assert await pub.read_packet() == (PUBCOMP, struct.pack("!H", 7))
    await pub.send(pubrel(7))  # a repeated PUBREL: answered, not delivered again
    assert await pub.read_packet() == (PUBCOMP, struct.pack("!H", 7))
    assert await publishes(sub) == [b"hello"]
    assert held(harness, "q2-pub") == {}
    await pub.close()
    await sub.close()


async def test_refused_qos2_publish_is_acknowledged_but_not_held(make_harness):
    """The ACL runs at PUBLISH: a refused QoS 2 message gets PUBREC/PUBCOMP but is never stored or routed."""
    h, tokens = await secure_harness(make_harness)
    sub = await subscriber(h, "resident-3", "users/3/#", username="3", password=tokens["resident-3"])
    raw, _ = await connected(h, "resident-2", username="2", password=tokens["resident-2"])
    for i in range(1, 101):
        await raw.send(publish("users/3/commands", b"x" * 1000, qos=2, packet_id=i))
    for i in range(1, 101):
        assert await raw.read_packet() == (PUBREC, struct.pack("!H", i))
    assert held(h, "resident-2") == {}
    await raw.send(pubrel(1))
    assert await raw.read_packet() == (PUBCOMP, struct.pack("!H", 1))
    assert await publishes(sub, 0.3) == []
    await raw.close()
    await sub.close()


async def test_qos2_window_is_bounded_by_max_inflight_messages(make_harness):
    """More unreleased QoS 2 messages than `limits.max_inflight_messages` close the connection."""
    h = await make_harness(limits={"max_inflight_messages": 4})
    raw, _ = await connected(h, "q2-flood")
    for i in range(1, 41):
        await raw.send(publish("q2/flood", b"y" * 1000, qos=2, packet_id=i))
    recs = 0
    while (got := await quiet_read(raw, 3.0)) is not None:
        recs += got[0] == PUBREC
    assert recs == 4  # the window's worth, then the broker closed the connection
    assert await raw.closed(1.0)
    await asyncio.sleep(0.1)
    assert len(held(h, "q2-flood")) <= 4


async def test_window_frees_as_flows_complete(make_harness):
    """A client that releases its messages may send any number of them through a small window."""
    h = await make_harness(limits={"max_inflight_messages": 2})
    sub = await subscriber(h, "q2-win-sub", "q2/win", qos=0)
    raw, _ = await connected(h, "q2-win")
    for i in range(1, 21):
        await raw.send(publish("q2/win", str(i).encode(), qos=2, packet_id=i))
        assert await raw.read_packet() == (PUBREC, struct.pack("!H", i))
        await raw.send(pubrel(i))
        assert await raw.read_packet() == (PUBCOMP, struct.pack("!H", i))
    assert await publishes(sub) == [str(i).encode() for i in range(1, 21)]
    await raw.close()
    await sub.close()


async def test_clean_session_releases_held_messages_when_it_goes(harness):
    """What a clean session held awaiting PUBREL is dropped when its connection closes."""
    raw, _ = await connected(harness, "q2-gone")
    for i in range(1, 4):
        await raw.send(publish("q2/gone", b"z" * 10_000, qos=2, packet_id=i))
        assert await raw.read_packet() == (PUBREC, struct.pack("!H", i))
    session = harness.server.broker._sessions["q2-gone"][0]
    handler = harness.server.broker._sessions["q2-gone"][1]
    assert len(session.inflight_in) == 3
    await raw.close()
    for _ in range(50):
        if not session.inflight_in:
            break
        await asyncio.sleep(0.05)
    assert not session.inflight_in
    assert not handler._pubrel_waiters


async def test_persistent_session_keeps_held_message_across_reconnect(harness):
    """A persistent session keeps a QoS 2 message past PUBREC; PUBREL on the next connection delivers it."""
    sub = await subscriber(harness, "q2-keep-sub", "q2/keep", qos=1)
    raw, _ = await connected(harness, "q2-keep", clean=False)
    await raw.send(publish("q2/keep", b"kept", qos=2, packet_id=9))
    assert await raw.read_packet() == (PUBREC, struct.pack("!H", 9))
    await raw.close()
    await asyncio.sleep(0.2)
    raw, present = await connected(harness, "q2-keep", clean=False)
    assert present == 1
    await raw.send(pubrel(9))
    assert await raw.read_packet() == (PUBCOMP, struct.pack("!H", 9))
    assert await publishes(sub) == [b"kept"]
    await raw.close()
    await sub.close()
