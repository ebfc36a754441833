"""Byte-level MQTT 5 tests in the style of test_malformed_packets.py: hand-written packets, exact reason codes.

A bad v5 CONNECT is answered with CONNACK carrying the reason code, then closed; a bad packet after CONNECT
gets a DISCONNECT with the reason code before the close [MQTT-4.13.1-1]; a healthy client on the same broker
keeps being served throughout.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from tests.support.raw_mqtt import (
    PINGREQ,
    PUBACK,
    PUBLISH,
    PUBREC,
    SUBACK,
    UNSUBACK,
    Raw,
    connack5,
    connect5,
    disconnect_reason,
    packet,
    prop,
    props,
    publish5,
    read_props,
    subscribe5,
    unsubscribe5,
    varint,
)
from tests.support.raw_mqtt import utf8 as s

MALFORMED, PROTOCOL_ERROR, TOPIC_NAME_INVALID, TOPIC_ALIAS_INVALID = 0x81, 0x82, 0x90, 0x94
WILL = ("w/t", b"bye", 0, False, b"\x00")

BAD_CONNECT = {
    "property not valid in CONNECT (Topic Alias)": (connect5(properties=props(prop(0x23, 1, "h"))), MALFORMED),
    "duplicated Session Expiry Interval": (
        connect5(properties=props(prop(0x11, 5, "i"), prop(0x11, 6, "i"))), PROTOCOL_ERROR),
    "Receive Maximum 0": (connect5(properties=props(prop(0x21, 0, "h"))), PROTOCOL_ERROR),
    "Maximum Packet Size 0": (connect5(properties=props(prop(0x27, 0, "i"))), PROTOCOL_ERROR),
    "Request Problem Information 2": (connect5(properties=props(prop(0x17, 2, "b"))), PROTOCOL_ERROR),
    "Authentication Data without Method": (connect5(properties=props(prop(0x16, b"x", "d"))), PROTOCOL_ERROR),
    "unknown Authentication Method": (connect5(properties=props(prop(0x15, "SCRAM-SHA-1", "s"))), 0x8C),
    "property length past the packet": (connect5(properties=b"\x09\x11"), MALFORMED),
    "reserved connect flag": (connect5(flags=0x03), MALFORMED),
    "Will QoS 3": (connect5(will=("w/t", b"x", 3, False, b"\x00")), MALFORMED),
    "Will retain without Will flag": (connect5(flags=0x22), MALFORMED),
    "Will topic with wildcard": (connect5(will=("w/#", b"x", 0, False, b"\x00")), TOPIC_NAME_INVALID),
    "Will property not valid for a Will (Topic Alias)": (
        connect5(will=("w/t", b"x", 0, False, props(prop(0x23, 1, "h")))), MALFORMED),
    "Will Payload Format 1 with invalid UTF-8": (
        connect5(will=("w/t", b"\xff\xfe", 0, False, props(prop(0x01, 1, "b")))), 0x99),
    "client id invalid UTF-8": (connect5(b"\xc3\x28"), MALFORMED),
    "client id with U+0000": (connect5("a\x00b"), MALFORMED),
    "bytes after the payload": (connect5(extra=b"\x00\x01z"), MALFORMED),
    "user property with invalid UTF-8": (connect5(properties=props(b"\x26" + s("k") + s(b"\xed\xa0\x80"))), MALFORMED),
    "wrong protocol name": (packet(0x10, s("MQTX") + bytes([5, 2]) + b"\x00\x3c\x00" + s("c")), 0x84),
}

BAD_AFTER_CONNECT = {
    "PUBLISH with a CONNECT property (Session Expiry)": (publish5("a/b", properties=props(prop(0x11, 1, "i"))),
                                                         MALFORMED),
    "PUBLISH duplicated Message Expiry": (
        publish5("a/b", properties=props(prop(0x02, 5, "i"), prop(0x02, 6, "i"))), PROTOCOL_ERROR),
    "PUBLISH duplicated Content Type": (
        publish5("a/b", properties=props(prop(0x03, "a", "s"), prop(0x03, "b", "s"))), PROTOCOL_ERROR),
    "PUBLISH Topic Alias 0": (publish5("a/b", properties=props(prop(0x23, 0, "h"))), TOPIC_ALIAS_INVALID),
    "PUBLISH Topic Alias above the maximum": (publish5("a/b", properties=props(prop(0x23, 33, "h"))),
                                              TOPIC_ALIAS_INVALID),
    "PUBLISH empty topic with an alias never set": (publish5("", properties=props(prop(0x23, 1, "h"))),
                                                    PROTOCOL_ERROR),
    "PUBLISH empty topic without an alias": (publish5(""), PROTOCOL_ERROR),
    "PUBLISH with a Subscription Identifier": (publish5("a/b", properties=props(prop(0x0B, 1, "v"))),
                                               PROTOCOL_ERROR),
    "PUBLISH Payload Format Indicator 2": (publish5("a/b", properties=props(prop(0x01, 2, "b"))), PROTOCOL_ERROR),
    "PUBLISH QoS 0, Payload Format 1, invalid UTF-8": (
        publish5("a/b", b"\xff", properties=props(prop(0x01, 1, "b"))), 0x99),
    "PUBLISH topic with wildcard": (publish5("a/#"), TOPIC_NAME_INVALID),
    "PUBLISH Response Topic with wildcard": (publish5("a/b", properties=props(prop(0x08, "r/+", "s"))),
                                             TOPIC_NAME_INVALID),
    "PUBLISH QoS 3": (publish5("a/b", qos=3), MALFORMED),
    "PUBLISH packet id 0": (publish5("a/b", qos=1, packet_id=0), MALFORMED),
    "PUBLISH topic invalid UTF-8": (publish5(b"a/\xc3\x28"), MALFORMED),
    "PUBLISH property length past the packet": (packet(0x30, s("a/b") + b"\x7f"), MALFORMED),
    "SUBSCRIBE Subscription Identifier 0": (subscribe5([("a/b", 1)], properties=props(prop(0x0B, 0, "v"))),
                                            PROTOCOL_ERROR),
    "SUBSCRIBE two Subscription Identifiers": (
        subscribe5([("a/b", 1)], properties=props(prop(0x0B, 1, "v"), prop(0x0B, 2, "v"))), PROTOCOL_ERROR),
    "SUBSCRIBE with a PUBLISH property (Topic Alias)": (
        subscribe5([("a/b", 1)], properties=props(prop(0x23, 1, "h"))), MALFORMED),
    "SUBSCRIBE shared filter with No Local": (subscribe5([("$share/g/a/b", 0x04 | 1)]), PROTOCOL_ERROR),
    "SUBSCRIBE reserved option bits": (subscribe5([("a/b", 0x40 | 1)]), MALFORMED),
    "SUBSCRIBE Retain Handling 3": (subscribe5([("a/b", 0x30 | 1)]), MALFORMED),
    "SUBSCRIBE QoS 3": (subscribe5([("a/b", 3)]), MALFORMED),
    "SUBSCRIBE without a filter": (subscribe5([]), PROTOCOL_ERROR),
    "SUBSCRIBE filter # not last": (subscribe5([("a/#/b", 1)]), MALFORMED),
    "SUBSCRIBE shared filter without a group": (subscribe5([("$share//a", 1)]), MALFORMED),
    "SUBSCRIBE bad fixed-header flags": (b"\x80" + subscribe5([("a/b", 1)])[1:], MALFORMED),
    "UNSUBSCRIBE without a filter": (unsubscribe5([]), PROTOCOL_ERROR),
    "UNSUBSCRIBE with a Subscription Identifier": (unsubscribe5(["a/b"], properties=props(prop(0x0B, 1, "v"))),
                                                   MALFORMED),
    "PUBACK reason code not valid for PUBACK": (packet(0x40, b"\x00\x01\x92"), MALFORMED),
    "PUBACK with a Topic Alias property": (packet(0x40, b"\x00\x01\x00" + props(prop(0x23, 1, "h"))), MALFORMED),
    "PUBACK duplicated Reason String": (
        packet(0x40, b"\x00\x01\x00" + props(prop(0x1F, "a", "s"), prop(0x1F, "b", "s"))), PROTOCOL_ERROR),
    "PUBREL reason code 0x10": (packet(0x62, b"\x00\x01\x10"), MALFORMED),
    "PUBREL bad flags": (packet(0x60, b"\x00\x01"), MALFORMED),
    "DISCONNECT with a server-only reason code (0x8E)": (b"\xe0\x01\x8e", MALFORMED),
    "DISCONNECT with a PUBLISH property": (b"\xe0" + varint(2 + 3) + b"\x00" + props(prop(0x23, 1, "h")),
                                           MALFORMED),
    "AUTH without an Authentication Method": (b"\xf0\x00", PROTOCOL_ERROR),
    "second CONNECT": (connect5("again"), PROTOCOL_ERROR),
    "CONNACK from a client": (b"\x20\x03\x00\x00\x00", MALFORMED),
    "PINGREQ with a body": (packet(0xC0, b"\x00"), MALFORMED),
    "packet larger than Maximum Packet Size": (b"\x30" + varint(70_000), 0x95),
}


@pytest.fixture
async def healthy(harness):
    """A well-behaved 3.1.1 subscriber on the same broker; `await healthy()` proves it is still served."""
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


async def _connected(harness, client_id: str = "offender", properties: bytes = b"\x00") -> Raw:
    raw = await Raw.open(harness.server.mqtt_port)
    got = await connack5(raw, connect5(client_id, properties=properties))
    assert got is not None, got
    assert got[0] == 0, got
    return raw


@pytest.mark.parametrize(("data", "code"), BAD_CONNECT.values(), ids=BAD_CONNECT.keys())
async def test_bad_v5_connect_gets_connack_reason_then_close(harness, healthy, data, code):
    """A malformed or refused v5 CONNECT is answered with CONNACK carrying the spec's reason code, then closed."""
    raw = await Raw.open(harness.server.mqtt_port)
    got = await connack5(raw, data)
    assert got is not None, got
    assert got[0] == code, got
    assert await raw.closed(2)
    await raw.close()
    await healthy()


@pytest.mark.parametrize(("data", "code"), BAD_AFTER_CONNECT.values(), ids=BAD_AFTER_CONNECT.keys())
async def test_bad_v5_packet_gets_disconnect_reason_then_close(harness, healthy, data, code):
    """A bad packet on a v5 connection gets DISCONNECT with the spec's reason code, then the close [MQTT-4.13]."""
    raw = await _connected(harness)
    await raw.send(data)
    assert await disconnect_reason(raw) == code
    assert await raw.closed(3)
    await raw.close()
    await healthy()


async def test_connack_states_the_real_limits(harness):
    """CONNACK carries Receive Maximum, Maximum Packet Size, Topic Alias Maximum and the availability flags."""
    limits = harness.server.settings.limits
    raw = await Raw.open(harness.server.mqtt_port)
    got = await connack5(raw, connect5("limits", keepalive=30))
    assert got is not None
    code, p = got
    assert code == 0
    assert p[0x21] == limits.max_inflight_messages
    assert p[0x27] == limits.max_packet_bytes
    assert p[0x22] == limits.topic_alias_maximum
    assert p[0x25] == 1
    assert p[0x28] == 1
    assert p[0x29] == 1
    assert p[0x2A] == 1
    assert 0x13 not in p
    assert 0x12 not in p
    await raw.close()


async def test_assigned_client_id_and_server_keep_alive(harness):
    """An empty client id gets an Assigned Client Identifier; keepalive 0 is overridden by Server Keep Alive."""
    raw = await Raw.open(harness.server.mqtt_port)
    got = await connack5(raw, connect5("", keepalive=0))
    assert got is not None
    assert got[0] == 0
    assert got[1][0x12]
    assert got[1][0x13] == harness.server.settings.limits.max_keepalive_s
    await raw.close()


async def test_session_expiry_above_the_cap_is_stated(harness):
    """A Session Expiry above limits.session_expiry_s is capped, and CONNACK says so."""
    raw = await Raw.open(harness.server.mqtt_port)
    got = await connack5(raw, connect5("capped", properties=props(prop(0x11, 0xFFFFFFFF, "i"))))
    assert got is not None
    assert got[1][0x11] == harness.server.settings.limits.session_expiry_s
    await raw.close()


async def test_puback_reason_codes(make_harness):
    """PUBACK says 0x10 with no subscriber, 0x00 with one, 0x87 when the ACL refuses, 0x99 for bad UTF-8."""
    harness = await make_harness(acl={"anonymous": {"publish": ["a/#"], "subscribe": ["#"]}})
    raw = await _connected(harness)
    await raw.send(publish5("a/nobody", qos=1, packet_id=1))
    assert await raw.read_packet() == (PUBACK, b"\x00\x01\x10")
    await raw.send(publish5("b/denied", qos=1, packet_id=2))
    assert await raw.read_packet() == (PUBACK, b"\x00\x02\x87")
    await raw.send(publish5("a/x", b"\xff", qos=1, packet_id=3, properties=props(prop(0x01, 1, "b"))))
    assert await raw.read_packet() == (PUBACK, b"\x00\x03\x99")
    await raw.send(publish5("b/denied", qos=2, packet_id=4))
    assert await raw.read_packet() == (PUBREC, b"\x00\x04\x87")
    await raw.send(subscribe5([("a/#", 1)], packet_id=5))
    assert (await raw.read_packet())[0] == SUBACK
    await raw.send(publish5("a/me", qos=1, packet_id=6))
    kinds = {(await raw.read_packet())[0] & 0xF0 for _ in range(2)}
    assert kinds == {PUBLISH, PUBACK}
    await raw.send(PINGREQ)
    assert (await raw.read_packet())[0] == 0xD0  # the connection survived every refusal
    await raw.close()


async def test_receive_maximum_exceeded_is_disconnect_0x93(harness):
    """One QoS 2 PUBLISH more than the Receive Maximum without PUBREL ends the connection with 0x93."""
    limit = harness.server.settings.limits.max_inflight_messages
    raw = await _connected(harness)
    for i in range(1, limit + 1):
        await raw.send(publish5("q/2", qos=2, packet_id=i))
        assert (await raw.read_packet())[0] == PUBREC
    await raw.send(publish5("q/2", qos=2, packet_id=limit + 1))
    assert await disconnect_reason(raw) == 0x93
    await raw.close()


async def test_topic_alias_set_then_used(harness):
    """A Topic Alias set with a topic is resolved in later PUBLISHes with an empty topic."""
    sub = await _connected(harness, "sub")
    await sub.send(subscribe5([("al/#", 0)]))
    assert (await sub.read_packet())[0] == SUBACK
    pub = await _connected(harness, "pub")
    await pub.send(publish5("al/one", b"1", properties=props(prop(0x23, 7, "h"))))
    await pub.send(publish5("", b"2", properties=props(prop(0x23, 7, "h"))))
    for expected in (b"1", b"2"):
        first, body = await sub.read_packet()
        assert first == PUBLISH
        assert body[2:8] == b"al/one"
        assert body.endswith(expected)
    await sub.close()
    await pub.close()


async def test_unsuback_reason_codes(harness):
    """UNSUBACK says 0x00 for a held subscription and 0x11 for one that did not exist."""
    raw = await _connected(harness)
    await raw.send(subscribe5([("u/a", 1)]))
    assert (await raw.read_packet())[0] == SUBACK
    await raw.send(unsubscribe5(["u/a", "u/never"], packet_id=2))
    first, body = await raw.read_packet()
    assert first == UNSUBACK
    assert body == b"\x00\x02\x00\x00\x11"
    await raw.close()


async def test_v5_publish_reaches_v3_subscriber_without_properties(harness):
    """A v5 PUBLISH with properties reaches a 3.1.1 subscriber as a plain 3.1.1 PUBLISH (properties dropped)."""
    async with harness.mqtt("v3sub") as v3:
        await v3.subscribe("mix/#", qos=1)
        pub = await _connected(harness, "v5pub")
        p = props(prop(0x26, ("k", "v"), "p"), prop(0x03, "text/plain", "s"), prop(0x02, 60, "i"))
        await pub.send(publish5("mix/a", b"hello", qos=1, packet_id=1, properties=p))
        async with asyncio.timeout(3):
            msg = await anext(aiter(v3.messages))
        assert msg.payload == b"hello"
        assert str(msg.topic) == "mix/a"
        assert msg.properties is None
        await pub.close()


async def test_v3_publish_reaches_v5_subscriber(harness):
    """A 3.1.1 PUBLISH reaches a v5 subscriber as a v5 PUBLISH with an empty property block."""
    sub = await _connected(harness, "v5sub")
    await sub.send(subscribe5([("mix3/#", 1)]))
    assert (await sub.read_packet())[0] == SUBACK
    async with harness.mqtt("v3pub") as v3:
        await v3.publish("mix3/a", b"hi", qos=1)
        first, body = await sub.read_packet()
        assert first == PUBLISH | 0x02
        assert body[:2] == struct.pack("!H", 6)
        assert body[2:8] == b"mix3/a"
        assert body[10:] == b"\x00hi"  # packet id, no properties, payload
    await sub.close()


async def test_message_expiry_forwarded_as_remaining(harness):
    """A subscriber gets the Message Expiry Interval minus the time the message waited in the broker."""
    sub = await _connected(harness, "exp", properties=props(prop(0x11, 600, "i")))
    await sub.send(subscribe5([("ex/#", 1)]))
    assert (await sub.read_packet())[0] == SUBACK
    await sub.close()  # offline: the message waits in the session's queue
    pub = await _connected(harness, "exppub")
    await pub.send(publish5("ex/a", b"m", qos=1, packet_id=1, properties=props(prop(0x02, 10, "i"))))
    assert (await pub.read_packet())[0] == PUBACK
    await asyncio.sleep(2.2)
    sub = await Raw.open(harness.server.mqtt_port)
    got = await connack5(sub, connect5("exp", clean=False, properties=props(prop(0x11, 600, "i"))))
    assert got is not None
    assert got[0] == 0
    first, body = await sub.read_packet()
    assert first & 0xF0 == PUBLISH
    found, _ = read_props(body, 2 + 4 + 2)
    assert 5 <= found[0x02] <= 8  # type: ignore[operator]
    await sub.close()
    await pub.close()


async def test_outgoing_qos2_flow_and_unknown_pubrec(harness):
    """A QoS 2 delivery to a v5 client runs PUBLISH, PUBREC, PUBREL, PUBCOMP; a PUBREC for an unknown id gets 0x92."""
    sub = await _connected(harness, "q2sub")
    await sub.send(subscribe5([("q2/#", 2)]))
    assert (await sub.read_packet())[0] == SUBACK
    harness.server.broker.publish("q2/a", b"two", qos=2)
    first, body = await sub.read_packet()
    assert first == PUBLISH | 0x04
    assert body.endswith(b"two")
    packet_id = body[6:8]
    await sub.send(packet(0x50, packet_id))
    assert await sub.read_packet() == (0x62, packet_id)
    await sub.send(packet(0x70, packet_id) + PINGREQ)
    assert (await sub.read_packet())[0] == 0xD0  # the PUBCOMP before it was handled
    assert not harness.server.broker._sessions["q2sub"][0].inflight_out
    await sub.send(packet(0x50, b"\x12\x34"))
    assert await sub.read_packet() == (0x62, b"\x12\x34\x92")
    await sub.close()
