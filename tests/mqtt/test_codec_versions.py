"""The one codec (`broker/mqtt/codec.py`, `encode.py`) speaks 3.1.1 and 5: each packet type, where the wire differs.

Pure (no broker): bytes built with `tests/support/raw_mqtt.py` go through the decoders of both versions; the
encoders' 3.1.1 forms are checked byte by byte against MQTT 3.1.1 §3.
"""

from __future__ import annotations

import pytest

from broker.mqtt import codec, encode
from broker.mqtt.codec import V5, V311
from broker.mqtt.packet_guard import Malformed, check_packet, remaining_length
from broker.mqtt.reason import ProtocolError
from tests.support.raw_mqtt import (
    PUBACK,
    PUBREL,
    ack,
    connect,
    packet,
    publish,
    subscribe,
    unsubscribe,
    utf8,
)


def split(whole: bytes) -> tuple[int, bytes]:
    """(fixed-header flags, body) of a whole packet."""
    header = remaining_length(whole, 1, len(whole))
    assert header is not None
    length, at = header
    return whole[0] & 0x0F, whole[at:at + length]


def body(whole: bytes) -> bytes:
    return split(whole)[1]


def test_connect_names_its_version() -> None:
    c = codec.decode_connect(body(connect("c1", username="u", password="p", clean=False,
                                          will=("w/t", b"bye", 1, True))))
    assert (c.version, c.client_id, c.clean_start, c.username, c.password) == (V311, "c1", False, "u", b"p")
    assert (c.will_topic, c.will_payload, c.will_qos, c.will_retain, c.props, c.will_props) == \
        ("w/t", b"bye", 1, True, {}, {})
    assert codec.decode_connect(body(connect("c3", proto=b"MQIsdp", version=3))).version == V311
    assert codec.decode_connect(body(connect("c5", version=5))).version == V5


@pytest.mark.parametrize(("proto", "level"), [(b"MQTT", 3), (b"MQIsdp", 4), (b"MQTT", 6)])
def test_unknown_protocol_level_is_0x84(proto: bytes, level: int) -> None:
    with pytest.raises(ProtocolError) as err:
        codec.decode_connect(body(connect("c", proto=proto, version=level)))
    assert err.value.code == 0x84  # CONNACK 1 in 3.1.1


def test_password_without_username_is_malformed_in_311_only() -> None:
    with pytest.raises(ProtocolError):
        codec.decode_connect(body(connect("c", password="p")))
    assert codec.decode_connect(body(connect("c", password="p", version=5))).password == b"p"


def test_311_publish_has_no_property_block() -> None:
    # a payload starting with 0x00 is payload in 3.1.1, an empty property block in 5
    flags, raw = split(publish("a/b", b"\x00xy", qos=1, packet_id=7))
    pub = codec.decode_publish(flags, raw, V311)
    assert (pub.topic, pub.packet_id, pub.payload, pub.props, pub.forward) == ("a/b", 7, b"\x00xy", {}, b"")
    assert codec.decode_publish(flags, raw, V5).payload == b"xy"
    assert codec.publish_header(flags, raw, V311) == ("a/b", 7, 7)


def test_empty_topic_is_a_topic_alias_in_5_malformed_in_311() -> None:
    flags, raw = split(publish("", b"x"))
    with pytest.raises(ProtocolError):
        codec.decode_publish(flags, raw, V311)
    assert codec.decode_publish(*split(publish("", b"x", version=5)), V5).topic == ""


def test_311_ack_is_exactly_a_packet_id() -> None:
    assert codec.decode_ack(4, body(ack(PUBACK, 9)), V311).packet_id == 9
    long = body(packet(PUBACK, b"\x00\x09\x10"))
    with pytest.raises(ProtocolError):
        codec.decode_ack(4, long, V311)
    assert codec.decode_ack(4, long, V5).reason == 0x10
    assert codec.decode_ack(6, body(ack(PUBREL, 3)), V311).packet_id == 3


def test_311_subscribe_options_are_the_qos_alone() -> None:
    sub = codec.decode_subscribe(body(subscribe([("a/+", 1), ("b/#", 2)], packet_id=4)), V311)
    assert sub.packet_id == 4
    assert [(s.topic_filter, s.qos, s.no_local, s.retain_handling) for s in sub.subscriptions] == \
        [("a/+", 1, False, 0), ("b/#", 2, False, 0)]
    no_local = body(subscribe([("a", 0x04)]))  # No Local in 5, a reserved bit in 3.1.1
    with pytest.raises(ProtocolError):
        codec.decode_subscribe(no_local, V311)
    assert codec.decode_subscribe(body(subscribe([("a", 0x04)], version=5)), V5).subscriptions[0].no_local


def test_311_bad_share_name_is_left_to_suback() -> None:
    # 3.1.1 answers a bad ShareName with SUBACK 0x80 (the index), MQTT 5 closes as Malformed
    assert codec.decode_subscribe(body(subscribe([("$share/a+b/t", 0)])), V311).subscriptions[0].qos == 0
    with pytest.raises(ProtocolError):
        codec.decode_subscribe(body(subscribe([("$share/a+b/t", 0)], version=5)), V5)
    with pytest.raises(ProtocolError):
        codec.decode_subscribe(body(subscribe([("a/#/b", 0)])), V311)


def test_311_unsubscribe_and_disconnect() -> None:
    assert codec.decode_unsubscribe(body(unsubscribe(["a", "b/+"], packet_id=5)), V311) == (5, ["a", "b/+"], {})
    assert codec.decode_disconnect(b"", V311).reason == 0
    with pytest.raises(ProtocolError):
        codec.decode_disconnect(b"\x04", V311)
    assert codec.decode_disconnect(b"\x04", V5).reason == 0x04


def test_311_encoders() -> None:
    assert encode.encode_connack(True, 5, {}, V311) == b"\x20\x02\x01\x05"
    assert encode.encode_connack(False, 0, {}, V5) == b"\x20\x03\x00\x00\x00"
    assert encode.encode_suback(1, [0, 1, 2, 0x87], version=V311) == b"\x90\x06\x00\x01\x00\x01\x02\x80"
    assert encode.encode_unsuback(2, [0x11], version=V311) == b"\xb0\x02\x00\x02"
    assert encode.encode_ack(4, 3, 0x10, version=V311) == b"\x40\x02\x00\x03"
    assert encode.encode_ack(4, 3, 0x10) == b"\x40\x03\x00\x03\x10"
    assert encode.encode_publish(b"a/b", b"x", 1, 7, True, False, None) == publish("a/b", b"x", 1, 7, retain=True)
    assert encode.encode_publish(b"a/b", b"x", 0, 0, False, False, b"") == publish("a/b", b"x", version=5)


def test_packet_guard_uses_the_311_decoders() -> None:
    flags, raw = split(subscribe([("a", 0x04)]))
    with pytest.raises(Malformed):
        check_packet(8, flags, raw, first=False)
    check_packet(8, *split(subscribe([("$share/a+b/t", 1)])), first=False)
    # a known protocol name at a level not served passes the guard: CONNACK 1 answers it
    check_packet(1, 0, body(connect("c", version=3)), first=True)
    with pytest.raises(Malformed):
        check_packet(1, 0, body(packet(0x10, utf8("MQTX") + bytes([4, 2]) + b"\x00\x3c" + utf8("c1"))), first=True)
