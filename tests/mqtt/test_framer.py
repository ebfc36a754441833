"""packet_guard.Framer: sans-IO framing, fed arbitrary chunks, handing out whole validated packets."""

from __future__ import annotations

import pytest

from broker.mqtt.packet_guard import Framer, Malformed
from broker.mqtt.reason import Reason
from tests.support.raw_mqtt import PINGREQ, connect, connect5, publish, subscribe


def take_all(framer: Framer) -> list[tuple[int, bytes]]:
    out = []
    while (packet := framer.next()) is not None:
        out.append(packet)
    return out


def test_packets_split_anywhere_come_out_whole_and_in_order():
    """A stream cut into 1..7-byte chunks yields the same packets as the stream fed at once; nothing is kept after."""
    stream = connect("framer") + publish("a/b", b"x" * 300) + subscribe([("a/#", 1)]) + PINGREQ
    whole = Framer(64 * 1024)
    whole.feed(stream)
    expected = take_all(whole)
    assert [first >> 4 for first, _ in expected] == [1, 3, 8, 12]
    for size in range(1, 8):
        framer = Framer(64 * 1024)
        got = []
        for i in range(0, len(stream), size):
            framer.feed(stream[i:i + size])
            got += take_all(framer)
        assert got == expected
        assert framer.buffered() == 0


def test_a_connect_at_level_5_makes_the_stream_mqtt5():
    """The CONNECT's protocol level decides which rules the later packets are checked by."""
    framer = Framer(1024)
    framer.feed(connect5("v5"))
    assert framer.next() is not None
    assert framer.protocol == 5


def test_first_packet_must_be_connect():
    """A PUBLISH before CONNECT is Malformed [MQTT-3.1.0-1]."""
    framer = Framer(1024)
    framer.feed(publish("a", b"x"))
    with pytest.raises(Malformed):
        framer.next()


def test_a_packet_over_the_size_limit_is_refused_from_its_header():
    """Past max_packet_bytes the framer refuses once the Remaining Length is known, before the body arrives."""
    framer = Framer(100)
    framer.feed(connect("big"))
    assert framer.next() is not None
    framer.feed(publish("a", b"x" * 200)[:5])
    with pytest.raises(Malformed) as exc:
        framer.next()
    assert exc.value.code == Reason.PACKET_TOO_LARGE


def test_a_remaining_length_over_four_bytes_is_malformed():
    """Five continuation bytes in the Remaining Length break [MQTT-2.2.3]."""
    framer = Framer(1024)
    framer.feed(b"\x10\xff\xff\xff\xff\x01")
    with pytest.raises(Malformed):
        framer.next()
