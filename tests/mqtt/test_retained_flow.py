"""Retained flow control: a subscription matching more retained messages than the backlog holds gets them all."""

from __future__ import annotations

import pytest

from tests.support.raw_mqtt import (
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBLISH,
    Raw,
    ack,
    connect,
    parse_publish,
    publish,
    subscribe,
)

TOPICS = 12_000  # more than delivery.max_queued (10,000)


async def fill_retained(port: int, n: int) -> None:
    """n retained QoS 1 messages on n topics, each PUBACKed."""
    raw = await Raw.open(port)
    assert await raw.connack(connect("retainer")) == 0
    for i in range(n):
        raw.writer.write(publish(f"site/{i // 100}/{i}", f"v{i}".encode(), qos=1, packet_id=i % 65535 + 1,
                                 retain=True))
        if i % 500 == 0:
            await raw.writer.drain()
    await raw.writer.drain()
    acks = 0
    while acks < n:
        got = await raw.read_packet(10)
        assert got is not None
        assert got[0] == PUBACK
        acks += 1
    await raw.close()


async def receive_retained(port: int, client_id: str, subscribe_now: bool) -> tuple[set[str], int]:
    """Connect a persistent QoS 1 session (subscribing to `#` if asked), PUBACK every PUBLISH until quiet.
    Returns the retained topics received and the session-present flag; fails if the broker hangs up."""
    raw = await Raw.connected(port, client_id, clean=False, keepalive=60)
    present = int(bool(raw.session_present))
    if subscribe_now:
        await raw.send(subscribe([("#", 1)]))
    topics: set[str] = set()
    while True:
        try:
            got = await raw.read_packet(2.0)
        except TimeoutError:
            break
        assert got is not None, f"disconnected after {len(topics)} retained messages"
        if got[0] & 0xF0 != PUBLISH:
            continue
        p = parse_publish(*got)
        assert p.retain
        assert p.qos == 1
        topics.add(p.topic)
        raw.writer.write(ack(PUBACK, p.packet_id))
    await raw.send(PINGREQ)  # still connected
    assert (await raw.read_packet())[0] == PINGRESP  # type: ignore[index]
    await raw.close()
    return topics, present


@pytest.mark.slow
async def test_subscription_to_12k_retained_topics_receives_them_all(harness):
    """12,000 retained QoS 1 topics, then a persistent QoS 1 client subscribes to `#`: all 12,000 arrive,
    under the in-flight window, with no slow-reader disconnect; again on its next connection."""
    port = harness.server.mqtt_port
    await fill_retained(port, TOPICS)
    want = {f"site/{i // 100}/{i}" for i in range(TOPICS)}
    topics, _ = await receive_retained(port, "retained-reader", subscribe_now=True)
    assert topics == want
    topics, present = await receive_retained(port, "retained-reader", subscribe_now=False)
    assert present == 1
    assert topics == want
