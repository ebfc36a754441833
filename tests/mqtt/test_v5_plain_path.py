"""MQTT 5 on the 3.1.1 fast path: `OptionsTable` says when a v5 subscriber's options cannot change a delivery,
and the hand-decoded PUBLISH delivers exactly what the codec path does.

Real broker in-process on an ephemeral port, raw MQTT 5 clients (`tests/support/raw_mqtt.py`).
"""

from __future__ import annotations

from broker.mqtt.sub_options import OptionsTable, SubOptions
from tests.support.raw_mqtt import Publish, Raw, connect5, parse_publish, prop, props, publish5, subscribe5

RESPONSE_TOPIC = 0x08


async def delivery(raw: Raw) -> tuple[Publish, bytes]:
    """The next PUBLISH and its application payload (after the MQTT 5 property block)."""
    got = await raw.read_packet(5)
    assert got is not None
    assert got[0] & 0xF0 == 0x30, got
    pub = parse_publish(*got)
    length, shift, i = 0, 0, 0
    while True:
        byte = pub.payload[i]
        length |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return pub, pub.payload[i + length:]


def test_options_table_counts_the_subscriptions_that_need_delivery_for():
    """Every mutator keeps `special` equal to the number of No Local / Retain As Published / identifier / shared
    subscriptions in the table."""
    table = OptionsTable({"a": SubOptions(1), "b": SubOptions(0, no_local=True)})
    assert table.special == 1
    table["c"] = SubOptions(1, sub_id=7)
    table["$share/g/d"] = SubOptions(0)
    assert table.special == 3
    table["b"] = SubOptions(0)  # replaced by a plain one
    assert table.special == 2
    assert table.pop("c") == SubOptions(1, sub_id=7)
    assert table.pop("missing", None) is None
    del table["$share/g/d"]
    assert table.special == 0
    table.setdefault("e", SubOptions(2, retain_as_published=True))
    assert table.special == 1
    table.update({"e": SubOptions(2)})
    assert table.special == 0
    table |= {"f": SubOptions(0, no_local=True)}
    assert table.special == 1
    table.popitem()
    assert table.special == 0
    table["g"] = SubOptions(0, no_local=True)
    table.clear()
    assert table.special == 0
    assert not table


async def test_plain_and_property_publishes_are_delivered_alike(harness):
    """A subscriber with overlapping plain filters gets the highest granted QoS for a PUBLISH without properties
    (hand-decoded) and one with a Response Topic (codec path); after it adds a No Local filter, its own plain
    PUBLISH still comes through the plain filters, and a malformed plain-looking PUBLISH (packet id 0) is
    refused with DISCONNECT 0x81 as before."""
    port = harness.server.mqtt_port
    sub = await Raw.open(port)
    assert await sub.connack(connect5("plain-sub"), 5) == 0
    await sub.send(subscribe5([("users/9/#", 0), ("users/9/x", 1)]))
    assert (await sub.read_packet(5))[0] == 0x90  # type: ignore[index]
    pub = await Raw.open(port)
    assert await pub.connack(connect5("plain-pub"), 5) == 0
    await pub.send(publish5("users/9/x", b"plain", qos=0))
    await pub.send(publish5("users/9/x", b"props", qos=0, properties=props(prop(RESPONSE_TOPIC, "users/9/r", "s"))))
    got = [await delivery(sub) for _ in range(2)]
    assert [(payload, p.qos) for p, payload in got] == [(b"plain", 0), (b"props", 0)]
    await pub.send(publish5("users/9/x", b"q1", qos=1, packet_id=3))
    assert await pub.read_packet(5) == (0x40, b"\x00\x03")  # PUBACK, success, short form
    delivered, payload = await delivery(sub)
    assert (payload, delivered.qos) == (b"q1", 1)
    await sub.puback(delivered.packet_id)
    await sub.send(subscribe5([("users/9/own", 0x04)], packet_id=2))  # No Local
    assert (await sub.read_packet(5))[0] == 0x90  # type: ignore[index]
    await sub.send(publish5("users/9/own", b"mine", qos=0))
    mine, payload = await delivery(sub)
    assert (mine.topic, payload) == ("users/9/own", b"mine")  # through users/9/#, which has no No Local
    await pub.send(publish5("users/9/x", b"bad", qos=1, packet_id=0))
    assert await pub.read_packet(5) == (0xE0, b"\x81\x00")  # DISCONNECT, Malformed Packet
    pub.abort()
    await sub.close(disconnect=True)


def test_delivery_for_matches_with_the_one_tree_matcher():
    """`delivery_for` finds a session's matching filters with `tree.matching` over the table's own filter tree (the
    engine has one topic matcher): wildcards, `$share/{group}/` stripped, `$` topics not matched by a leading
    wildcard [MQTT-4.7.2-1], and the tree pruned as filters go."""
    import broker.mqtt.sub_options as sub_options
    from broker.mqtt.sub_options import delivery_for

    assert not hasattr(sub_options, "matches")  # no second matcher beside tree.matching
    table = OptionsTable({"a/+/c": SubOptions(1, sub_id=1), "a/#": SubOptions(0, sub_id=2),
                          "$share/g/a/b/c": SubOptions(2, sub_id=3), "#": SubOptions(0, no_local=True),
                          "x/y": SubOptions(2, retain_as_published=True)})
    assert delivery_for(table, "a/b/c", own=False, retain=True) == (2, False, (1, 2, 3))
    assert delivery_for(table, "a/b/c", own=True, retain=False) == (2, False, (1, 2, 3))
    assert delivery_for(table, "x/y", own=False, retain=True) == (2, True, ())
    assert delivery_for(table, "$SYS/x", own=False, retain=False) is None
    assert delivery_for(table, "q", own=True, retain=False) is None
    assert delivery_for(table, "q", own=False, retain=False) == (0, False, ())
    del table["$share/g/a/b/c"]
    table.pop("a/+/c")
    assert delivery_for(table, "a/b/c", own=False, retain=False) == (0, False, (2,))
    assert "b" not in table.root.children["a"].children  # pruned
    table.clear()
    assert not table.root.children
