"""The fast path end to end: retained-leak and QoS regressions, subscriptions, ordering and bounded delivery."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiomqtt
import pytest

from tests.support.raw_mqtt import Raw


async def until_marker(client: aiomqtt.Client, marker: str) -> list[aiomqtt.Message]:
    """Every message up to and including the one on `marker`."""
    seen: list[aiomqtt.Message] = []
    async with asyncio.timeout(5):
        async for msg in client.messages:
            seen.append(msg)
            if str(msg.topic) == marker:
                return seen
    return seen


def topics_of(messages: list[aiomqtt.Message]) -> list[str]:
    return [str(m.topic) for m in messages]


async def test_a_new_client_gets_no_retained_messages_of_other_clients_subscriptions(harness):
    """Regression: amqtt sent a new connection the retained messages of every filter any client held."""
    broker = harness.server.broker
    async with harness.mqtt("resident-2") as r2:
        await r2.subscribe("devices/1/status", qos=1)
        broker.publish("devices/1/status", b'{"online": true}', qos=1, retain=True)
        async with harness.mqtt("resident-4") as r4:
            await r4.subscribe("users/4/#", qos=1)
            broker.publish("users/4/marker", b"m", qos=1)
            assert topics_of(await until_marker(r4, "users/4/marker")) == ["users/4/marker"]


async def test_a_resumed_session_gets_retained_messages_of_its_own_filters_only(harness):
    """A persistent session that reconnects is sent the retained messages of its filters, not of others'."""
    broker = harness.server.broker
    async with harness.mqtt("resident-2", clean=False) as r2:
        await r2.subscribe("devices/1/status", qos=1)
        await r2.subscribe("users/2/#", qos=1)
    async with harness.mqtt("resident-4") as r4:
        await r4.subscribe("devices/5/status", qos=1)
        broker.publish("devices/1/status", b"1", qos=1, retain=True)
        broker.publish("devices/5/status", b"5", qos=1, retain=True)
        async with harness.mqtt("resident-2", clean=False) as again:
            # the SUBACK is written after everything sent at connect, so the marker comes last
            await again.subscribe("users/2/other", qos=1)
            broker.publish("users/2/marker", b"m", qos=1)
            got = topics_of(await until_marker(again, "users/2/marker"))
    assert "devices/5/status" not in got
    assert got[-1] == "users/2/marker"
    assert "devices/1/status" in got


@pytest.mark.parametrize(("pub_qos", "sub_qos", "expected"), [(0, 1, 0), (1, 0, 0), (1, 1, 1), (0, 0, 0)])
async def test_delivered_qos_is_the_lower_of_publisher_and_subscriber(harness, pub_qos, sub_qos, expected):
    """Regression: amqtt delivered at the subscriber's QoS; MQTT 3.1.1 §3.8.4 says min(publish, granted)."""
    async with harness.mqtt("resident-2") as sub, harness.mqtt("device-1") as pub:
        await sub.subscribe("users/2/#", qos=sub_qos)
        await pub.publish("users/2/note", b"x", qos=pub_qos)
        msgs = await until_marker(sub, "users/2/note")
        assert [m.qos for m in msgs] == [expected]


async def test_qos2_goes_through_amqtts_own_flow_and_arrives_once(harness):
    """A QoS 2 PUBLISH (not decoded by the fast reader) completes its 4-packet flow and is delivered once at QoS 2."""
    async with harness.mqtt("resident-2") as sub, harness.mqtt("device-1") as pub:
        await sub.subscribe("users/2/#", qos=2)
        await pub.publish("users/2/exactly-once", b"2", qos=2, timeout=5)
        await pub.publish("users/2/marker", b"m", qos=2, timeout=5)  # same QoS: ordered after the first
        msgs = await until_marker(sub, "users/2/marker")
        assert [(str(m.topic), m.qos) for m in msgs] == [("users/2/exactly-once", 2), ("users/2/marker", 2)]


async def test_server_messages_are_downgraded_for_a_qos0_subscriber(harness):
    """The call service publishes at QoS 1; a QoS 0 subscriber receives QoS 0."""
    async with harness.mqtt("resident-2") as sub:
        await sub.subscribe("users/2/#", qos=0)
        harness.server.broker.publish("users/2/calls/incoming", b"{}", qos=1)
        msgs = await until_marker(sub, "users/2/calls/incoming")
        assert [m.qos for m in msgs] == [0]


async def test_overlapping_filters_deliver_once_at_the_highest_qos(harness):
    """`users/2/#` at QoS 0 and `users/2/calls/+` at QoS 1 both match: one copy, at QoS 1."""
    async with harness.mqtt("resident-2") as sub:
        await sub.subscribe("users/2/#", qos=0)
        await sub.subscribe("users/2/calls/+", qos=1)
        harness.server.broker.publish("users/2/calls/x", b"once", qos=1)
        harness.server.broker.publish("users/2/marker", b"m", qos=1)
        msgs = await until_marker(sub, "users/2/marker")
        assert [(str(m.topic), m.qos) for m in msgs] == [("users/2/calls/x", 1), ("users/2/marker", 0)]


async def test_unsubscribe_stops_delivery_and_disconnect_drops_subscriptions(harness):
    """After UNSUBSCRIBE the filter no longer matches; after a clean disconnect none of its filters remain."""
    broker = harness.server.broker
    async with harness.mqtt("resident-2") as sub:
        await sub.subscribe("users/2/a", qos=1)
        await sub.subscribe("users/2/b", qos=1)
        await sub.unsubscribe("users/2/a")
        broker.publish("users/2/a", b"a", qos=1)
        broker.publish("users/2/b", b"b", qos=1)
        assert topics_of(await until_marker(sub, "users/2/b")) == ["users/2/b"]
        assert "users/2/b" in broker.subscriptions
        assert "users/2/a" not in broker.subscriptions
    for _ in range(200):
        if "users/2/b" not in broker.subscriptions:
            break
        await asyncio.sleep(0.01)
    assert "users/2/b" not in broker.subscriptions
    assert broker.deliver(None, "users/2/b", b"nobody", 1) == 0


async def test_wildcard_subscription_gets_every_matching_retained_message(harness):
    """`devices/+/status` receives each device's retained status, flagged retained, at min(QoS)."""
    broker = harness.server.broker
    broker.publish("devices/1/status", b"1", qos=1, retain=True)
    broker.publish("devices/5/status", b"5", qos=1, retain=True)
    broker.publish("devices/5/status/extra", b"no", qos=1, retain=True)
    async with harness.mqtt("admin-watch") as sub:
        await sub.subscribe("devices/+/status", qos=0)
        await sub.subscribe("users/9/#", qos=0)
        broker.publish("users/9/marker", b"m", qos=0)
        msgs = [m for m in await until_marker(sub, "users/9/marker") if m.retain]
        assert sorted((str(m.topic), m.payload, m.qos) for m in msgs) == [
            ("devices/1/status", b"1", 0), ("devices/5/status", b"5", 0)]
    broker.publish("devices/1/status", b"", qos=1, retain=True)
    assert "devices/1/status" not in broker.retained_messages


async def test_fan_out_keeps_each_publishers_order_for_every_subscriber(harness):
    """300 QoS 1 messages to 8 subscribers arrive complete and in order at each of them."""
    subs = []
    for i in range(8):
        client = harness.mqtt(f"watch-{i}")
        await client.__aenter__()
        await client.subscribe("users/7/#", qos=1)
        subs.append(client)
    async with harness.mqtt("device-1") as pub:
        for n in range(300):
            await pub.publish("users/7/seq", str(n).encode(), qos=1 if n % 2 else 0)
        await pub.publish("users/7/end", b"", qos=1)
    for client in subs:
        got = [int(m.payload) for m in await until_marker(client, "users/7/end") if str(m.topic) == "users/7/seq"]
        assert got == list(range(300))
        await client.__aexit__(None, None, None)


async def test_a_full_qos1_window_queues_and_sheds_the_oldest_qos0(make_harness):
    """With the window full, the backlog keeps QoS 1 and the newest QoS 0; a PUBACK releases them in order."""
    h = await make_harness(delivery={"max_inflight": 2, "max_queued": 5})
    broker = h.server.broker
    raw = await Raw.connected(h.server.mqtt_port, "resident-2")
    assert await raw.subscribe([("users/2/#", 1)]) == [1]
    for n in range(3):
        broker.publish("users/2/q1", f"q1-{n}".encode(), qos=1)
    for n in range(10):
        broker.publish("users/2/q0", f"q0-{n}".encode(), qos=0)
    first = [await raw.next_publish() for _ in range(2)]
    assert [p.payload for p in first] == [b"q1-0", b"q1-1"]
    await raw.puback(first[0].packet_id)
    rest = [(await raw.next_publish()).payload for _ in range(5)]
    assert rest == [b"q1-2", b"q0-6", b"q0-7", b"q0-8", b"q0-9"]
    await raw.close()


async def test_a_persistent_session_keeps_its_queued_qos1_messages_when_the_connection_drops(make_harness):
    """Messages waiting behind a full QoS 1 window are not lost with the connection: a persistent
    session gets the in-flight one again (DUP) and the queued ones from its offline queue."""
    h = await make_harness(delivery={"max_inflight": 1, "max_queued": 50})
    broker = h.server.broker
    raw = await Raw.connected(h.server.mqtt_port, "resident-2", clean=False)
    assert await raw.subscribe([("users/2/#", 1)]) == [1]
    for n in range(4):
        broker.publish("users/2/q1", f"m{n}".encode(), qos=1)
    first = await raw.next_publish()
    assert first.payload == b"m0"
    raw.abort()  # gone without a PUBACK, three messages still queued behind the window
    await h.offline("resident-2")
    again = await Raw.connected(h.server.mqtt_port, "resident-2", clean=False)
    got = []
    for _ in range(4):
        publish = await again.next_publish()
        got.append(publish.payload)
        await again.puback(publish.packet_id)
    assert got == [b"m0", b"m1", b"m2", b"m3"]
    await again.close()


async def test_a_reader_that_never_acks_is_disconnected_with_a_log_line(make_harness, caplog):
    """Past `max_queued` QoS 1 messages for a peer that never PUBACKs, the broker closes the connection."""
    h = await make_harness(delivery={"max_inflight": 2, "max_queued": 5})
    raw = await Raw.connected(h.server.mqtt_port, "resident-2")
    assert await raw.subscribe([("users/2/#", 1)]) == [1]
    with caplog.at_level(logging.WARNING, logger="intercom.delivery"):
        for n in range(20):
            h.server.broker.publish("users/2/q1", f"{n}".encode(), qos=1)
        assert await raw.closed(5)
    assert any("disconnecting resident-2" in r.getMessage() for r in caplog.records)
    await raw.close()


@pytest.mark.parametrize("topic", ["users/2/+", "users/#"])
async def test_publishing_on_a_wildcard_topic_closes_the_connection(harness, topic):
    """[MQTT-3.3.2-2]: a PUBLISH whose topic holds a wildcard ends the connection and is not delivered."""
    async with harness.mqtt("watch") as watch:
        await watch.subscribe("#", qos=0)
        raw = await Raw.connected(harness.server.mqtt_port, "device-1")
        await raw.publish(topic, b"bad")
        assert await raw.closed(5)
        harness.server.broker.publish("users/2/marker", b"m", qos=0)
        got = topics_of(await until_marker(watch, "users/2/marker"))
        assert topic not in got
        assert got[-1] == "users/2/marker"
        await raw.close()


async def test_a_dollar_topic_publish_is_acknowledged_and_never_reaches_wildcards(harness):
    """[MQTT-4.7.2-1]: `$x/y` is acknowledged, the publisher stays connected, and `#` / `+/y` never see it."""
    async with harness.mqtt("watch") as watch, harness.mqtt("pub") as pub:
        await watch.subscribe("#", qos=0)
        await watch.subscribe("+/y", qos=0)
        await pub.publish("$x/y", b"d", qos=1, timeout=5)
        await pub.publish("users/2/marker", b"m", qos=1, timeout=5)
        got = topics_of(await until_marker(watch, "users/2/marker"))
        assert "$x/y" not in got
        assert got[-1] == "users/2/marker"


async def test_an_abrupt_disconnect_publishes_the_will(harness):
    """A connection that drops without DISCONNECT has its Will delivered through the index."""
    async with harness.mqtt("resident-2") as sub:
        await sub.subscribe("users/2/#", qos=1)
        raw = await Raw.connected(harness.server.mqtt_port, "device-1", will=("users/2/will", b"gone"))
        raw.abort()
        msgs = await until_marker(sub, "users/2/will")
        assert [(str(m.topic), m.payload) for m in msgs] == [("users/2/will", b"gone")]


async def test_a_call_request_is_handled_by_the_synchronous_intercept_hook(harness, party):
    """`calls/request/1` reaches the call service through `intercept_publish`; residents ring."""
    dev, r2 = await party("device", "1"), await party("resident", "2")
    await dev.client.publish("calls/request/1", json.dumps({"household_number": "101", "request_id": "q"}), qos=1)
    _, reply = await dev.wait_for(lambda t, b: isinstance(b, dict) and b.get("request_id") == "q")
    _, incoming = await r2.wait_for(lambda t, b: t.endswith("/calls/incoming"))
    assert incoming["call_id"] == reply["call_id"]
    plugins: list[Any] = harness.server.broker.plugins_manager.plugins
    assert any(callable(getattr(p, "intercept_publish", None)) for p in plugins)
    assert not any(hasattr(p, "on_broker_message_broadcast") for p in plugins)
