"""The same packet-level scenarios against MQTT 3.1.1 and MQTT 5 where the spec says both behave alike:
subscribe/publish at each QoS, retained messages, unsubscribe, the QoS 1 and 2 flows both ways, session resume.

Each scenario runs once per protocol version with raw packets (`tests.support.raw_mqtt`); only the
wire format differs (v5 property blocks and reason codes), which `Peer` hides.
"""

from __future__ import annotations

import struct

import pytest

from tests.support.raw_mqtt import (
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    UNSUBACK,
    Raw,
    ack,
    connect,
    connect5,
    prop,
    props,
    publish,
    publish5,
    read_varint,
    subscribe5,
    unsubscribe5,
)
from tests.support.raw_mqtt import subscribe as subscribe3
from tests.support.raw_mqtt import utf8 as s

VERSIONS = [pytest.param(4, id="3.1.1"), pytest.param(5, id="5")]


class Peer:
    """A raw client of one protocol version: the same calls, the version's wire format."""

    def __init__(self, raw: Raw, version: int) -> None:
        self.raw = raw
        self.version = version
        self.session_present = False
        self._pid = 0

    @classmethod
    async def open(cls, port: int, version: int, client_id: str, clean: bool = True) -> Peer:
        raw = await Raw.open(port)
        if version == 5:  # a persistent v5 session needs a Session Expiry Interval to outlive the connection
            data = connect5(client_id, clean=clean, properties=props(prop(0x11, 0 if clean else 300, "i")))
        else:
            data = connect(client_id, clean=clean)
        await raw.send(data)
        got = await raw.read_packet()
        assert got is not None, got
        assert got[0] == 0x20, got
        assert got[1][1] == 0, got
        peer = cls(raw, version)
        peer.session_present = bool(got[1][0] & 1)
        return peer

    def _next_id(self) -> int:
        self._pid += 1
        return self._pid

    async def _expect(self, first: int) -> bytes:
        got = await self.raw.read_packet()
        assert got is not None, (hex(first), got)
        assert got[0] == first, (hex(first), got)
        return got[1]

    async def subscribe(self, topic_filter: str, qos: int) -> int:
        pid = self._next_id()
        sub = subscribe5 if self.version == 5 else subscribe3
        await self.raw.send(sub([(topic_filter, qos)], pid))
        body = await self._expect(SUBACK)
        return body[-1]

    async def unsubscribe(self, topic_filter: str) -> None:
        pid = self._next_id()
        if self.version == 5:
            await self.raw.send(unsubscribe5([topic_filter], pid))
        else:
            await self.raw.send(bytes([0xA2, 2 + len(s(topic_filter))]) + struct.pack("!H", pid) + s(topic_filter))
        body = await self._expect(UNSUBACK)
        assert body[:2] == struct.pack("!H", pid)

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """PUBLISH and run the sender's side of its flow to the end."""
        pid = self._next_id() if qos else 0
        if self.version == 5:
            await self.raw.send(publish5(topic, payload, qos, pid, flags=(qos << 1) | int(retain)))
        else:
            await self.raw.send(publish(topic, payload, qos, pid, retain=retain))
        if qos == 1:
            assert (await self._expect(PUBACK))[:2] == struct.pack("!H", pid)
        elif qos == 2:
            assert (await self._expect(PUBREC))[:2] == struct.pack("!H", pid)
            await self.raw.send(ack(PUBREL, pid))
            assert (await self._expect(PUBCOMP))[:2] == struct.pack("!H", pid)

    async def receive(self, complete: bool = True) -> tuple[str, bytes, int, bool]:
        """The next PUBLISH as (topic, payload, qos, retain); `complete` runs the receiver's side of its flow."""
        got = await self.raw.read_packet()
        assert got is not None, got
        assert got[0] & 0xF0 == PUBLISH, got
        first, body = got
        qos, retain = (first >> 1) & 3, bool(first & 1)
        tlen = struct.unpack("!H", body[:2])[0]
        at = 2 + tlen
        pid = struct.unpack("!H", body[at:at + 2])[0] if qos else 0
        at += 2 if qos else 0
        if self.version == 5:
            length, at = read_varint(body, at)  # the property block: skipped
            at += length
        if complete and qos == 1:
            await self.raw.send(ack(PUBACK, pid))
        elif complete and qos == 2:
            await self.raw.send(ack(PUBREC, pid))
            assert (await self._expect(PUBREL))[:2] == struct.pack("!H", pid)
            await self.raw.send(ack(PUBCOMP, pid))
        return body[2:2 + tlen].decode(), body[at:], qos, retain

    async def quiet(self, seconds: float = 0.3) -> bool:
        """Nothing arrives within `seconds` (PINGREQ answered: the connection is alive)."""
        got = await self.raw.poll(seconds)
        if got is not None:
            return False
        await self.raw.send(b"\xc0\x00")
        return await self.raw.read_packet() == (0xD0, b"")

    async def close(self) -> None:
        await self.raw.close(disconnect=True)


@pytest.mark.parametrize("version", VERSIONS)
async def test_publish_at_each_qos_is_downgraded_to_the_subscription(harness, version):
    """Each QoS flow completes for the sender, and the copy goes out at min(publish QoS, granted QoS)."""
    port = harness.server.mqtt_port
    sub1, sub2 = await Peer.open(port, version, "d-sub1"), await Peer.open(port, version, "d-sub2")
    pub = await Peer.open(port, version, "d-pub")
    assert await sub1.subscribe("diff/q/#", 1) == 1
    assert await sub2.subscribe("diff/q/#", 2) == 2
    for qos in (0, 1, 2):
        await pub.publish(f"diff/q/{qos}", f"m{qos}".encode(), qos)
        assert await sub1.receive() == (f"diff/q/{qos}", f"m{qos}".encode(), min(qos, 1), False)
        assert await sub2.receive() == (f"diff/q/{qos}", f"m{qos}".encode(), qos, False)
    assert await sub1.quiet()
    assert await sub2.quiet()
    for peer in (sub1, sub2, pub):
        await peer.close()


@pytest.mark.parametrize("version", VERSIONS)
async def test_retained_message_set_sent_and_cleared(harness, version):
    """A retained message reaches a later subscriber with RETAIN set; an empty retained payload clears it."""
    port = harness.server.mqtt_port
    pub = await Peer.open(port, version, "r-pub")
    await pub.publish("diff/r/a", b"kept", 1, retain=True)
    sub = await Peer.open(port, version, "r-sub")
    assert await sub.subscribe("diff/r/#", 1) == 1
    assert await sub.receive() == ("diff/r/a", b"kept", 1, True)
    await pub.publish("diff/r/a", b"live", 0)  # not retained: delivered live with RETAIN clear
    assert await sub.receive() == ("diff/r/a", b"live", 0, False)
    await pub.publish("diff/r/a", b"", 0, retain=True)
    assert await sub.receive() == ("diff/r/a", b"", 0, False)  # a live copy: RETAIN clear [MQTT-3.3.1-9]
    late = await Peer.open(port, version, "r-late")
    assert await late.subscribe("diff/r/#", 1) == 1
    assert await late.quiet()
    for peer in (pub, sub, late):
        await peer.close()


@pytest.mark.parametrize("version", VERSIONS)
async def test_unsubscribe_stops_delivery(harness, version):
    """After UNSUBACK nothing more is delivered for that filter; another filter still is."""
    port = harness.server.mqtt_port
    sub, pub = await Peer.open(port, version, "u-sub"), await Peer.open(port, version, "u-pub")
    assert await sub.subscribe("diff/u/a", 1) == 1
    assert await sub.subscribe("diff/u/b", 1) == 1
    await pub.publish("diff/u/a", b"1", 1)
    assert (await sub.receive())[1] == b"1"
    await sub.unsubscribe("diff/u/a")
    await pub.publish("diff/u/a", b"2", 1)
    await pub.publish("diff/u/b", b"3", 1)
    assert await sub.receive() == ("diff/u/b", b"3", 1, False)
    assert await sub.quiet()
    await sub.close()
    await pub.close()


@pytest.mark.parametrize("version", VERSIONS)
async def test_unacknowledged_qos1_and_qos2_are_resent_on_resume(harness, version):
    """Deliveries left unacknowledged come again (DUP) when the persistent session resumes; QoS 2 completes then."""
    port = harness.server.mqtt_port
    sub = await Peer.open(port, version, "f-sub", clean=False)
    assert await sub.subscribe("diff/f/#", 2) == 2
    pub = await Peer.open(port, version, "f-pub")
    await pub.publish("diff/f/1", b"one", 1)
    await pub.publish("diff/f/2", b"two", 2)
    assert (await sub.receive(complete=False))[:3] == ("diff/f/1", b"one", 1)
    assert (await sub.receive(complete=False))[:3] == ("diff/f/2", b"two", 2)
    sub.raw.abort()
    again = await Peer.open(port, version, "f-sub", clean=False)
    assert again.session_present
    got = {(await again.receive())[:3] for _ in range(2)}
    assert got == {("diff/f/1", b"one", 1), ("diff/f/2", b"two", 2)}
    assert await again.quiet()
    await again.close()
    await pub.close()


@pytest.mark.parametrize("version", VERSIONS)
async def test_session_resume_keeps_subscriptions_and_queues_offline_messages(harness, version):
    """A persistent session resumes with session present, its subscription and the messages queued meanwhile;
    a clean start forgets it."""
    port = harness.server.mqtt_port
    sub = await Peer.open(port, version, "s-sub", clean=False)
    assert not sub.session_present
    assert await sub.subscribe("diff/s/#", 1) == 1
    await sub.close()
    pub = await Peer.open(port, version, "s-pub")
    await pub.publish("diff/s/a", b"while away", 1)
    back = await Peer.open(port, version, "s-sub", clean=False)
    assert back.session_present
    assert await back.receive() == ("diff/s/a", b"while away", 1, False)
    await back.close()
    fresh = await Peer.open(port, version, "s-sub", clean=True)
    assert not fresh.session_present
    await pub.publish("diff/s/b", b"not for a clean session", 1)
    assert await fresh.quiet()
    await fresh.close()
    await pub.close()
