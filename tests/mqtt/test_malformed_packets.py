"""Raw-socket malformed-packet suite in the style of Mosquitto's test/broker/data/*.json.

Each case sends hand-written bytes and expects the broker to close the connection (no CONNACK for a
bad CONNECT), while a healthy client on the same broker keeps being served.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from tests.support.raw_mqtt import PINGREQ, Raw, connect, packet, publish, subscribe, utf8, varint

BAD_CONNECT = {
    "excess bytes after CONNECT payload": connect("c1", extra=b"\x00\x01z"),
    "Will QoS 3": connect("c1", will=("w/t", b"x", 3, False)),
    "Will QoS without Will flag": connect("c1", flags=0x02 | 0x08),
    "Will retain without Will flag": connect("c1", flags=0x02 | 0x20),
    "reserved connect flag": connect("c1", flags=0x03),
    "Will topic with wildcard": connect("c1", will=("w/#", b"x", 0, False)),
    "Will topic with +": connect("c1", will=("w/+/x", b"x", 0, False)),
    "Will topic with U+0000": connect("c1", will=("w/\x00", b"x", 0, False)),
    "client id invalid UTF-8": connect(b"\xff\xfe"),
    "password without username": connect("c1", flags=0x02 | 0x40) + b"",
    "bad protocol name": packet(0x10, utf8("MQTX") + bytes([4, 2]) + b"\x00\x3c" + utf8("c1")),
    "CONNECT fixed-header flags": b"\x11" + connect("c1")[1:],
    "truncated CONNECT": packet(0x10, utf8("MQTT") + bytes([4])),
    "first packet not CONNECT": PINGREQ,
    "first packet PUBLISH": publish("a/b"),
}

BAD_AFTER_CONNECT = {
    "second CONNECT": connect("c1"),
    "PUBLISH QoS 3": publish("a/b", qos=3, packet_id=1),
    "SUBSCRIBE QoS 3": subscribe([("a/b", 3)]),
    "SUBSCRIBE reserved bits in QoS byte": subscribe([("a/b", 0x40)]),
    "SUBSCRIBE bad fixed-header flags": subscribe([("a/b", 0)], first=0x80),
    "SUBSCRIBE no topic filter": packet(0x82, struct.pack("!H", 1)),
    "SUBSCRIBE packet id 0": subscribe([("a/b", 0)], packet_id=0),
    "SUBSCRIBE filter with U+0000": subscribe([("a/\x00", 0)]),
    "SUBSCRIBE filter invalid UTF-8": subscribe([(b"a/\xc3\x28", 0)]),
    "SUBSCRIBE filter # not last": subscribe([("a/#/b", 0)]),
    "SUBSCRIBE filter partial +": subscribe([("a/b+/c", 0)]),
    "UNSUBSCRIBE bad flags": packet(0xA0, struct.pack("!H", 1) + utf8("a/b")),
    "UNSUBSCRIBE no filter": packet(0xA2, struct.pack("!H", 1)),
    "PUBLISH QoS 1 without packet id": packet(0x32, utf8("a/b")),
    "PUBLISH packet id 0": publish("a/b", qos=1, packet_id=0),
    "PUBLISH topic with U+0000": publish("a/\x00b"),
    "PUBLISH topic invalid UTF-8": publish(b"a/\xed\xa0\x80"),
    "PUBLISH topic with #": publish("a/#"),
    "PUBLISH topic with +": publish("a/+/b"),
    "PUBLISH empty topic": publish(""),
    "PUBLISH QoS 0 with DUP": publish("a/b", flags=0x08),
    "PUBACK wrong length": packet(0x40, b"\x00\x01\x00"),
    "PUBACK packet id 0": packet(0x40, b"\x00\x00"),
    "PUBCOMP packet id 0": packet(0x70, b"\x00\x00"),
    "PUBREL bad flags": packet(0x60, b"\x00\x01"),
    "PINGREQ with a body": packet(0xC0, b"\x00"),
    "DISCONNECT bad flags": b"\xe1\x00",
    "reserved packet type 0": b"\x00\x00",
    "reserved packet type 15": b"\xf0\x00",
    "CONNACK from a client": b"\x20\x02\x00\x00",
    "SUBACK from a client": b"\x90\x03\x00\x01\x00",
    "remaining length of 5 bytes": b"\x30\xff\xff\xff\xff\x01",
    "packet larger than max_packet_bytes": b"\x30" + varint(70_000),
}


@pytest.fixture
async def healthy(harness):
    """A well-behaved subscriber on the same broker; `await healthy()` proves it is still served."""
    async with harness.mqtt("healthy") as client:
        await client.subscribe("health/#", qos=1)
        messages = aiter(client.messages)
        n = 0

        async def check() -> None:
            nonlocal n
            n += 1
            harness.server.broker.publish("health/ping", str(n).encode(), qos=1)
            async with asyncio.timeout(3):
                msg = await anext(messages)
            assert msg.payload == str(n).encode()

        await check()
        yield check


@pytest.mark.parametrize("data", BAD_CONNECT.values(), ids=BAD_CONNECT.keys())
async def test_bad_connect_is_closed_without_connack(harness, healthy, data):
    """The broker closes a connection whose CONNECT is malformed, without accepting it."""
    raw = await Raw.open(harness.server.mqtt_port)
    assert await raw.connack(data) is None
    assert await raw.closed(2)
    await raw.close()
    await healthy()


@pytest.mark.parametrize("data", BAD_AFTER_CONNECT.values(), ids=BAD_AFTER_CONNECT.keys())
async def test_bad_packet_after_connect_closes_the_connection(harness, healthy, data):
    """The broker closes a connected client that sends a malformed packet."""
    raw = await Raw.open(harness.server.mqtt_port)
    assert await raw.connack(connect("offender")) == 0
    await raw.send(data)
    assert await raw.closed(2)
    await raw.close()
    await healthy()


async def test_valid_packets_are_not_refused(harness, healthy):
    """The control case: well-formed PUBLISH/SUBSCRIBE/PINGREQ on the same path are served."""
    raw = await Raw.open(harness.server.mqtt_port)
    assert await raw.connack(connect("ok", will=("w/t", b"bye", 1, False))) == 0
    await raw.send(subscribe([("a/#", 1)], packet_id=7))
    assert (await raw.read_packet())[0] == 0x90
    await raw.send(publish("a/b", b"hi", qos=1, packet_id=9))
    kinds = {(await raw.read_packet())[0] & 0xF0 for _ in range(2)}
    assert kinds == {0x40, 0x30}  # PUBACK for ours, and the PUBLISH back to us
    await raw.send(PINGREQ)
    assert (await raw.read_packet())[0] == 0xD0
    assert not await raw.closed(0.3)
    await raw.close()
    await healthy()


async def test_malformed_packet_fires_the_will(harness):
    """A client closed for a protocol violation did not DISCONNECT, so its Will is published."""
    async with harness.mqtt("watcher") as watcher:
        await watcher.subscribe("wills/#", qos=1)
        raw = await Raw.open(harness.server.mqtt_port)
        assert await raw.connack(connect("dies", will=("wills/dies", b"gone", 1, False))) == 0
        await raw.send(publish("a/b", qos=3, packet_id=1))
        assert await raw.closed(2)
        async with asyncio.timeout(3):
            msg = await anext(aiter(watcher.messages))
        assert str(msg.topic) == "wills/dies"
        assert msg.payload == b"gone"
        await raw.close()


async def test_websocket_listener_is_guarded_too(harness, healthy):
    """Over MQTT-over-WebSocket, a malformed packet after CONNECT also closes the connection."""
    import websockets

    uri = f"ws://127.0.0.1:{harness.server.ws_port}/"
    async with websockets.connect(uri, subprotocols=[websockets.Subprotocol("mqtt")]) as ws:
        await ws.send(connect("ws-offender"))
        assert (await asyncio.wait_for(ws.recv(), 3))[:1] == b"\x20"
        await ws.send(publish("a/b", qos=3, packet_id=1))
        async def drain() -> None:
            async with asyncio.timeout(3):
                while True:
                    await ws.recv()

        with pytest.raises(websockets.ConnectionClosed):
            await drain()
    await healthy()


async def test_websocket_message_over_max_packet_bytes_closes_the_connection(make_harness):
    """A WebSocket message larger than `max_packet_bytes` is refused by the WebSocket layer (close 1009)."""
    import websockets

    h = await make_harness(limits={"max_packet_bytes": 2048})
    uri = f"ws://127.0.0.1:{h.server.ws_port}/"
    async with websockets.connect(uri, subprotocols=[websockets.Subprotocol("mqtt")]) as ws:
        await ws.send(connect("ws-big"))
        assert (await asyncio.wait_for(ws.recv(), 3))[:1] == b"\x20"
        await ws.send(publish("a/b", b"x" * 10_000))

        async def drain() -> None:
            async with asyncio.timeout(3):
                while True:
                    await ws.recv()

        with pytest.raises(websockets.ConnectionClosed) as closed:
            await drain()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
