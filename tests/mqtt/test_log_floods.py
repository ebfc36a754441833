"""A client-driven flood gives one log line per source, not one per event (`LogThrottle.log` at every site).

Real broker in-process on ephemeral ports, real clients; `caplog` counts the records a flood left behind.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.support.doors import station
from tests.support.raw_mqtt import Raw, connect

FLOOD = 20


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_a_flood_of_late_door_acks_gives_one_line_per_station(make_harness, caplog):
    """A station repeating its ack for a command that already timed out gets 409 each time, logged once."""
    h = await make_harness(doors={"ack_timeout_s": 0.3})
    with caplog.at_level(logging.INFO):
        async with station(h, ack=None) as st:
            call_id = (await h.start_call())["call_id"]
            status, _ = await h.post("/api/doors/unlock", {"device_id": "1", "call_id": call_id, "resident_id": "2"})
            assert status == 504
            ack = json.dumps({"command_id": st.commands[0]["command_id"], "ok": True})
            for _ in range(FLOOD):
                await st.client.publish("devices/1/commands/ack", ack, qos=1)
            async with asyncio.timeout(10):
                while sum(1 for b in st.control if "error" in b) < FLOOD:
                    await st.wait(lambda b: "error" in b)
                    await asyncio.sleep(0.05)
    assert len(lines(caplog, "after doors.ack_timeout_s")) == 1, lines(caplog, "after doors.ack_timeout_s")


async def test_a_flood_of_malformed_connections_gives_one_line(harness, caplog):
    """Connections whose first packet is not CONNECT are closed by the packet guard; logged once per address."""
    with caplog.at_level(logging.INFO):
        for _ in range(FLOOD):
            raw = await Raw.open(harness.server.mqtt_port)
            await raw.send(b"\xc0\x00")  # PINGREQ first
            assert await raw.closed(5)
    assert len(lines(caplog, "closing MQTT connection from")) == 1, lines(caplog, "closing MQTT connection from")


async def test_a_flood_of_mqtt5_protocol_errors_gives_one_line(harness, caplog):
    """MQTT 5 connections sending AUTH without enhanced authentication get DISCONNECT 0x82; logged once."""
    with caplog.at_level(logging.INFO):
        for i in range(FLOOD):
            raw = await Raw.open(harness.server.mqtt_port)
            assert await raw.connack(connect(f"auth-{i}", version=5), 5) == 0
            await raw.send(b"\xf0\x00")  # AUTH
            assert await raw.closed(5)
    assert len(lines(caplog, "closing MQTT 5 connection")) == 1, lines(caplog, "closing MQTT 5 connection")


async def test_a_flood_over_max_connections_gives_one_line(make_harness, caplog):
    """Connections refused at accept for `limits.max_connections` are logged once per address and reason."""
    h = await make_harness(limits={"max_connections": 1})
    with caplog.at_level(logging.INFO):
        held = await Raw.open(h.server.mqtt_port)
        assert await held.connack(connect("held"), 5) == 0
        for _ in range(FLOOD):
            raw = await Raw.open(h.server.mqtt_port)
            assert await raw.closed(5)
        await held.close(disconnect=True)
    assert len(lines(caplog, "refused MQTT connection")) == 1, lines(caplog, "refused MQTT connection")


async def test_a_flood_of_idle_rest_connections_gives_one_eviction_line(make_harness, caplog):
    """Past `limits.max_http_connections`, each new connection evicts the oldest idle one; logged once."""
    h = await make_harness(limits={"max_http_connections": 2})
    writers: list[asyncio.StreamWriter] = []
    with caplog.at_level(logging.INFO):
        try:
            for _ in range(FLOOD):
                _, writer = await asyncio.open_connection("127.0.0.1", h.server.http_port)
                writers.append(writer)
                await asyncio.sleep(0.01)
            status, _ = await h.get("/healthz")
            assert status == 200
        finally:
            for writer in writers:
                writer.close()
    assert len(lines(caplog, "closed the oldest one")) == 1, lines(caplog, "closed the oldest one")


def test_log_throttle_writes_one_line_per_interval_with_the_count_held_back(caplog):
    """`LogThrottle.log`: one line per key per interval, the next one says how many were held back, and an
    exception's traceback comes with the line when asked for."""
    from broker.limiter import LogThrottle

    now = [0.0]
    throttle = LogThrottle(5.0, clock=lambda: now[0])
    logger = logging.getLogger("intercom.test.floods")
    with caplog.at_level(logging.INFO, logger="intercom.test.floods"):
        for _ in range(FLOOD):
            throttle.log(logger, logging.WARNING, "k", "refused %r", "peer")
        throttle.log(logger, logging.WARNING, "other", "refused %r", "other")
        now[0] = 5.0
        try:
            raise ValueError("boom")
        except ValueError:
            throttle.log(logger, logging.ERROR, "k", "refused %r", "peer", exc_info=True)
    got = [(r.getMessage(), bool(r.exc_info)) for r in caplog.records]
    assert got == [("refused 'peer'", False), ("refused 'other'", False),
                   (f"refused 'peer' ({FLOOD - 1} more since last logged)", True)]
