"""Incoming QoS 2 (MQTT 3.1.1 §4.3.3): ACL at PUBLISH, a bounded window, PUBREL always answered, once-only."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from tests.support.harness import Harness
from tests.support.raw_mqtt import PUBCOMP, PUBREC, Raw, publish
from tests.support.security import secure_harness


def held(h: Harness, client_id: str) -> dict[int, Any]:
    """The incoming QoS 2 messages the broker holds for `client_id` (awaiting PUBREL)."""
    entry = h.server.broker._sessions.get(client_id)
    return dict(entry[0].inflight_in) if entry is not None else {}


async def connected(h: Harness, client_id: str, clean: bool = True, **kw: Any) -> tuple[Raw, int]:
    """A raw client after CONNACK 0; returns it and the session-present flag."""
    raw = await Raw.connected(h.server.mqtt_port, client_id, clean=clean, **kw)
    return raw, int(bool(raw.session_present))


async def subscriber(h: Harness, client_id: str, topic: str, qos: int = 2, **kw: Any) -> Raw:
    raw, _ = await connected(h, client_id, **kw)
    await raw.subscribe([(topic, qos)])
    return raw


async def test_pubrel_for_unknown_packet_id_gets_pubcomp(harness):
    """A PUBREL the broker has no message for is still answered with PUBCOMP [MQTT-4.3.3-2, §4.3.3]."""
    raw, _ = await connected(harness, "q2-unknown")
    await raw.pubrel(4242)
    assert await raw.poll(2.0) == (PUBCOMP, struct.pack("!H", 4242))
    await raw.close()


async def test_message_is_routed_once_at_pubrel(harness):
    """PUBLISH -> PUBREC (held, not routed); a DUP re-send is PUBREC'd again; PUBREL routes it once -> PUBCOMP."""
    sub = await subscriber(harness, "q2-sub", "q2/once")
    pub, _ = await connected(harness, "q2-pub")
    await pub.send(publish("q2/once", b"hello", qos=2, packet_id=7))
    assert await pub.read_packet() == (PUBREC, struct.pack("!H", 7))
    assert await sub.publishes(0.3) == []  # method B: nothing goes out before PUBREL
    await pub.send(publish("q2/once", b"hello", qos=2, packet_id=7, dup=True))
    assert await pub.read_packet() == (PUBREC, struct.pack("!H", 7))
    assert list(held(harness, "q2-pub")) == [7]
    await pub.pubrel(7)
    assert await pub.read_packet() == (PUBCOMP, struct.pack("!H", 7))
    await pub.pubrel(7)  # a repeated PUBREL: answered, not delivered again
    assert await pub.read_packet() == (PUBCOMP, struct.pack("!H", 7))
    assert await sub.publishes() == [b"hello"]
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
    await raw.pubrel(1)
    assert await raw.read_packet() == (PUBCOMP, struct.pack("!H", 1))
    assert await sub.publishes(0.3) == []
    await raw.close()
    await sub.close()


async def test_qos2_window_is_bounded_by_max_inflight_messages(make_harness):
    """More unreleased QoS 2 messages than `limits.max_inflight_messages` close the connection."""
    h = await make_harness(limits={"max_inflight_messages": 4})
    raw, _ = await connected(h, "q2-flood")
    for i in range(1, 41):
        await raw.send(publish("q2/flood", b"y" * 1000, qos=2, packet_id=i))
    recs = 0
    while (got := await raw.poll(3.0)) is not None:
        recs += got[0] == PUBREC
    assert recs == 4  # the window's worth, then the broker closed the connection
    assert await raw.closed(1.0)
    await h.offline("q2-flood")
    assert len(held(h, "q2-flood")) <= 4


async def test_window_frees_as_flows_complete(make_harness):
    """A client that releases its messages may send any number of them through a small window."""
    h = await make_harness(limits={"max_inflight_messages": 2})
    sub = await subscriber(h, "q2-win-sub", "q2/win", qos=0)
    raw, _ = await connected(h, "q2-win")
    for i in range(1, 21):
        await raw.send(publish("q2/win", str(i).encode(), qos=2, packet_id=i))
        assert await raw.read_packet() == (PUBREC, struct.pack("!H", i))
        await raw.pubrel(i)
        assert await raw.read_packet() == (PUBCOMP, struct.pack("!H", i))
    assert await sub.publishes() == [str(i).encode() for i in range(1, 21)]
    await raw.close()
    await sub.close()


async def test_clean_session_releases_held_messages_when_it_goes(harness):
    """What a clean session held awaiting PUBREL is dropped when its connection closes."""
    raw, _ = await connected(harness, "q2-gone")
    for i in range(1, 4):
        await raw.send(publish("q2/gone", b"z" * 10_000, qos=2, packet_id=i))
        assert await raw.read_packet() == (PUBREC, struct.pack("!H", i))
    session = harness.server.broker._sessions["q2-gone"][0]
    assert len(session.inflight_in) == 3
    await raw.close()
    for _ in range(50):
        if not session.inflight_in:
            break
        await asyncio.sleep(0.05)
    assert not session.inflight_in


async def test_persistent_session_keeps_held_message_across_reconnect(harness):
    """A persistent session keeps a QoS 2 message past PUBREC; PUBREL on the next connection delivers it."""
    sub = await subscriber(harness, "q2-keep-sub", "q2/keep", qos=1)
    raw, _ = await connected(harness, "q2-keep", clean=False)
    await raw.send(publish("q2/keep", b"kept", qos=2, packet_id=9))
    assert await raw.read_packet() == (PUBREC, struct.pack("!H", 9))
    await raw.close()
    await harness.offline("q2-keep")
    raw, present = await connected(harness, "q2-keep", clean=False)
    assert present == 1
    await raw.pubrel(9)
    assert await raw.read_packet() == (PUBCOMP, struct.pack("!H", 9))
    assert await sub.publishes() == [b"kept"]
    await raw.close()
    await sub.close()
