"""An idle MQTT connection costs the server no task: its socket is served by callbacks, not a read loop."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.support.raw_mqtt import PINGREQ, PINGRESP, Raw, connack5, connect5, publish, subscribe

CLIENTS = 50


async def _settle() -> int:
    """The loop's task count once it stopped changing (connection set-up tasks end shortly after CONNACK)."""
    last = -1
    async with asyncio.timeout(5):
        while (now := len(asyncio.all_tasks())) != last:
            last = now
            await asyncio.sleep(0.2)
    return last


async def test_idle_connections_hold_no_task_each(make_harness):
    """50 connected, subscribed, idle clients (3.1.1 and 5) add no task per connection; they still answer PINGREQ."""
    h = await make_harness()
    port = h.server.mqtt_port
    before = await _settle()
    clients: list[Raw] = []
    try:
        for i in range(CLIENTS):
            if i % 2:
                raw = await Raw.connected(port, f"idle-{i}", keepalive=60)
            else:
                raw = await Raw.open(port)
                got = await connack5(raw, connect5(f"idle-{i}", keepalive=60))
                assert got is not None
                assert got[0] == 0
            clients.append(raw)
        await clients[1].subscribe([("idle/1/#", 1)])
        during = await _settle()
        print(f"{during - before} tasks for {CLIENTS} idle connections")
        assert during - before < CLIENTS // 5, f"{during - before} tasks for {CLIENTS} idle connections"
        for raw in clients[:4]:  # idle, not dead
            await raw.pingreq()
            packet = await raw.read_packet()
            assert packet is not None
            assert packet[0] == PINGRESP
    finally:
        for raw in clients:
            with contextlib.suppress(Exception):
                await raw.close(disconnect=True)
    await h.until(lambda: h.server.broker.open_connections == 0, what="every connection closed")


async def test_many_pipelined_packets_are_handled_in_order(make_harness):
    """SUBSCRIBE (awaits) then PUBLISHes pipelined in one write: the publishes wait for the SUBSCRIBE, in order."""
    h = await make_harness()
    raw = await Raw.connected(h.server.mqtt_port, "idle-pipeline", keepalive=60)
    try:
        await raw.send(subscribe([("idle/pipe/#", 0)], packet_id=7)
                       + b"".join(publish(f"idle/pipe/{i}", str(i).encode()) for i in range(200)))
        got = await raw.publishes(quiet_s=0.5)
        assert got == [str(i).encode() for i in range(200)]
    finally:
        await raw.close(disconnect=True)


@pytest.mark.parametrize("plugin", ["tests.mqtt.amqtt_event_probe.EventProbe", "tests.mqtt.async_acl_probe.SlowAllow"])
async def test_packets_arriving_while_a_handler_awaits_wait_in_order(make_harness, plugin):
    """With a plugin listening to message events, or an ACL whose verdict awaits, a PUBLISH takes the awaiting path;
    300 QoS 1 PUBLISHes and a PINGREQ pipelined in one write are all handled, acknowledged and delivered in order."""
    h = await make_harness(mqtt={"plugins": {plugin: {"label": "x"}}})
    port = h.server.mqtt_port
    sub = await Raw.connected(port, "idle-sub", keepalive=60)
    pub = await Raw.connected(port, "idle-pub", keepalive=60)
    try:
        await sub.subscribe([("idle/order/#", 0)])
        await pub.send(b"".join(publish(f"idle/order/{i}", str(i).encode(), qos=1, packet_id=i + 1)
                                for i in range(300)) + PINGREQ)
        acks = []
        while len(acks) < 301:
            packet = await pub.read_packet()
            assert packet is not None
            acks.append(packet)
        assert [first for first, _ in acks] == [0x40] * 300 + [PINGRESP]
        assert [int.from_bytes(body[:2], "big") for _, body in acks[:300]] == list(range(1, 301))
        assert await sub.publishes(quiet_s=0.5) == [str(i).encode() for i in range(300)]
    finally:
        await pub.close(disconnect=True)
        await sub.close(disconnect=True)
