"""Client-driven log lines are throttled, and client text in them is escaped (no forged log lines)."""

from __future__ import annotations

import logging

import pytest

from tests.support.security import granted, login, secure_harness


async def test_a_flood_of_bad_publishes_gives_a_bounded_number_of_log_lines(make_harness, caplog):
    """5,000 malformed control publishes from one resident give at most a handful of log lines, not 5,000."""
    h, t = await secure_harness(make_harness)
    with caplog.at_level(logging.INFO):
        async with h.mqtt(**login(t, "resident-3")) as r3:
            for i in range(5000):
                await r3.publish("users/3/calls/control", f'{{"bad": {i}', qos=0)
            # handled in order on one connection: once this is acknowledged, all 5,000 were handled
            await r3.publish("users/3/calls/control", b"{", qos=1)
            assert granted(await r3.subscribe("users/3/#", qos=1)) == [1]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(lines) <= 5, (len(lines), lines[:6])


@pytest.mark.parametrize(("who", "topic"), [("resident-2", "users/2/calls/control"),
                                           ("device-1", "devices/1/calls/control")])
async def test_a_newline_in_client_text_cannot_forge_a_log_line(make_harness, caplog, who, topic):
    """A newline a client puts in `call_info.action` reaches the log escaped: no record spans two lines."""
    h, t = await secure_harness(make_harness)
    with caplog.at_level(logging.INFO):
        async with h.mqtt(**login(t, who)) as c:
            await c.publish(topic, b'{"call_info":{"call_id":"1","action":"z\\nWARNING forged line"}}', qos=1)
            assert granted(await c.subscribe(topic.rsplit("/", 2)[0] + "/#", qos=1)) == [1]
    refused = [r.getMessage() for r in caplog.records if topic in r.getMessage()]
    assert refused, [r.getMessage() for r in caplog.records]
    assert not [m for m in refused if "\n" in m], refused
    assert any("forged line" in m for m in refused)  # still there, escaped
