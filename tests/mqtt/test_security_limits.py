"""Broker limits: CONNECT timeout, keepalive x1.5 with Will, packet size, connections, CONNECT rate, flapping."""

from __future__ import annotations

import asyncio
import time

from tests.support.raw_mqtt import PINGREQ, Raw, connect, publish


async def test_silent_socket_is_closed_after_the_connect_timeout(make_harness):
    """A socket that never sends CONNECT (or only part of one) is closed after `connect_timeout_s`."""
    h = await make_harness(limits={"connect_timeout_s": 0.5})
    silent, partial = await Raw.open(h.server.mqtt_port), await Raw.open(h.server.mqtt_port)
    await partial.send(connect("slow")[:5])
    t0 = time.perf_counter()
    assert await silent.closed(3)
    assert await partial.closed(3)
    assert 0.4 <= time.perf_counter() - t0 < 2.5
    await silent.close()
    await partial.close()


async def test_silent_client_is_dropped_after_one_and_a_half_keepalives_and_its_will_fires(harness):
    """Keepalive 1 s: the silent client is closed after ~1.5 s (not before 1 s) and its Will is delivered."""
    async with harness.mqtt("watcher") as watcher:
        await watcher.subscribe("wills/#", qos=1)
        raw = await Raw.open(harness.server.mqtt_port)
        assert await raw.connack(connect("silent", keepalive=1, will=("wills/silent", b"offline", 1, False))) == 0
        t0 = time.perf_counter()
        assert await raw.closed(4)
        elapsed = time.perf_counter() - t0
        assert 1.0 <= elapsed < 3.0, elapsed
        async with asyncio.timeout(3):
            msg = await anext(aiter(watcher.messages))
        assert str(msg.topic) == "wills/silent"
        assert msg.payload == b"offline"
        await raw.close()


async def test_client_that_pings_within_keepalive_stays_connected(harness):
    """A keepalive-1 client sending PINGREQ every 0.6 s is still connected after 2.5 s."""
    raw = await Raw.open(harness.server.mqtt_port)
    assert await raw.connack(connect("pinger", keepalive=1)) == 0
    for _ in range(4):
        await asyncio.sleep(0.6)
        await raw.send(PINGREQ)
        assert (await raw.read_packet(1))[0] == 0xD0
    assert not await raw.closed(0.2)
    await raw.close()


async def test_packet_over_max_packet_bytes_closes_the_connection(make_harness):
    """With `max_packet_bytes: 2048`, a 1.5 KB PUBLISH passes and a 3 KB one closes the connection."""
    h = await make_harness(limits={"max_packet_bytes": 2048})
    raw = await Raw.open(h.server.mqtt_port)
    assert await raw.connack(connect("big")) == 0
    await raw.send(publish("a/b", b"x" * 1500, qos=1, packet_id=1))
    assert (await raw.read_packet())[0] == 0x40
    await raw.send(publish("a/b", b"x" * 3000, qos=1, packet_id=2))
    assert await raw.closed(2)
    await raw.close()


async def test_connections_over_the_maximum_are_refused_not_queued(make_harness):
    """With `max_connections: 3`, a 4th socket is closed at once; after one leaves, a new one gets in."""
    h = await make_harness(limits={"max_connections": 3})
    conns = [await Raw.open(h.server.mqtt_port) for _ in range(3)]
    for i, c in enumerate(conns):
        assert await c.connack(connect(f"c{i}")) == 0
    extra = await Raw.open(h.server.mqtt_port)
    t0 = time.perf_counter()
    assert await extra.closed(2)
    assert time.perf_counter() - t0 < 1.0
    await extra.close()
    await conns[0].close()
    for _ in range(150):  # up to 3 s for the broker to notice the close
        if h.server.broker.open_connections < 3:
            break
        await asyncio.sleep(0.02)
    again = await Raw.open(h.server.mqtt_port)
    assert await again.connack(connect("again")) == 0
    for c in [*conns[1:], again]:
        await c.close()


async def test_connect_rate_per_address_is_limited(make_harness):
    """With loopback not exempt and a burst of 5, the 6th connection in a row is closed without CONNACK."""
    h = await make_harness(limits={"exempt_networks": [], "connect_rate": {"per_s": 0.1, "burst": 5}})
    for i in range(5):
        raw = await Raw.open(h.server.mqtt_port)
        assert await raw.connack(connect(f"r{i}")) == 0
        await raw.close()
    raw = await Raw.open(h.server.mqtt_port)
    assert await raw.connack(connect("r5")) is None
    await raw.close()


async def test_flapping_client_id_is_banned(make_harness):
    """A (non-exempt) client id connecting more than `flapping.max_connects` times in the window gets CONNACK 3."""
    h = await make_harness(limits={"exempt_networks": [], "flapping": {"max_connects": 3, "window_s": 60, "ban_s": 60}})
    codes = []
    for _ in range(5):
        raw = await Raw.open(h.server.mqtt_port)
        codes.append(await raw.connack(connect("flappy")))
        await raw.close()
    assert codes == [0, 0, 0, 3, 3]
    raw = await Raw.open(h.server.mqtt_port)
    assert await raw.connack(connect("steady")) == 0
    await raw.close()


def test_max_connections_is_lowered_to_fit_the_file_descriptor_limit():
    """A max_connections above `ulimit -n` is lowered, so accept() never runs out of descriptors."""
    import resource

    from broker.fd_budget import fd_bounded

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fd_bounded(10) == 10
    if soft != resource.RLIM_INFINITY:
        assert fd_bounded(soft * 2) < soft


async def test_keepalive_zero_is_enforced_as_max_keepalive(make_harness):
    """A client asking for no keepalive (0) is still dropped after `max_keepalive_s` x 1.5 of silence."""
    h = await make_harness(limits={"max_keepalive_s": 1})
    raw = await Raw.open(h.server.mqtt_port)
    assert await raw.connack(connect("forever", keepalive=0)) == 0
    t0 = time.perf_counter()
    assert await raw.closed(4)
    assert 1.0 <= time.perf_counter() - t0 < 3.0
    await raw.close()
