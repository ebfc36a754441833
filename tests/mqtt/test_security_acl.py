"""Topic ACL: cross-household reads and writes, wildcard widening, Will escape, $SYS, subscription cap."""

from __future__ import annotations

import json

import pytest

from broker.core.tokens import Principal
from plugins.acl import covers, expand
from tests.support.inbox import Inbox
from tests.support.raw_mqtt import Raw, connect
from tests.support.security import granted, login, secure_harness
from tests.support.waits import quiet

R2 = Principal("resident", "2")


@pytest.mark.parametrize(("pattern", "topic_filter", "ok"), [
    ("flat/1/+", "flat/1/x", True),
    ("flat/1/+", "flat/1/+", True),
    ("flat/1/+", "flat/1/#", False),
    ("flat/1/+", "flat/+/x", False),
    ("flat/1/#", "flat/1/a/b", True),
    ("flat/1/#", "flat/1/#", True),
    ("flat/1/#", "flat/1", True),
    ("flat/1/#", "flat/#", False),
    ("#", "$SYS/x", False),
    ("$SYS/#", "$SYS/broker/uptime", True),
    ("users/2/#", "users/+/calls", False),
])
def test_covers_checks_filters_as_filters(pattern, topic_filter, ok):
    """A pattern covers a filter only if it matches every topic the filter can match."""
    assert covers(pattern, topic_filter) is ok


def test_expand_refuses_wildcards_smuggled_in_ids():
    """A client id holding `+` or `#` yields no pattern, so `%c` can never widen a rule."""
    assert expand("c/%c/in", R2, "resident-2", ()) == ["c/resident-2/in"]
    assert expand("c/%c/in", R2, "resident-2/#", ()) == []
    assert expand("devices/%d/status", R2, "x", ["1", "7"]) == ["devices/1/status", "devices/7/status"]


async def test_resident_cannot_read_another_households_topics(make_harness):
    """Resident 4 (household 102) is refused `users/2/#`, `users/+/…` and `#`, and never hears 101's call."""
    h, t = await secure_harness(make_harness)
    async with h.mqtt(**login(t, "resident-4")) as spy, h.mqtt(**login(t, "resident-2")) as r2:
        assert granted(await spy.subscribe("users/2/#", qos=1)) == [128]
        assert granted(await spy.subscribe("users/+/calls/incoming", qos=1)) == [128]
        assert granted(await spy.subscribe("#", qos=1)) == [128]
        assert granted(await spy.subscribe("devices/1/status", qos=1)) == [128]
        assert granted(await spy.subscribe("users/4/#", qos=1)) == [1]
        assert granted(await r2.subscribe("users/2/#", qos=1)) == [1]
        spy_inbox, r2_inbox = Inbox(spy), Inbox(r2)
        status, _ = await h.post("/api/mqtt/call", {"device_id": "1"}, t["device-1"])
        assert status == 200
        await r2_inbox.wait_for(lambda topic, _: topic == "users/2/calls/incoming")
        await quiet(0.2)  # nothing reaches the spy
        assert spy_inbox.messages == []
        await spy_inbox.close()
        await r2_inbox.close()


async def test_resident_may_watch_only_its_own_households_devices(make_harness):
    """Resident 2 may subscribe `devices/1/status` (its household) but not device 5's or `devices/+/status`."""
    h, t = await secure_harness(make_harness)
    async with h.mqtt(**login(t, "resident-2")) as r2:
        assert granted(await r2.subscribe("devices/1/status", qos=1)) == [1]
        assert granted(await r2.subscribe("devices/5/status", qos=1)) == [128]
        assert granted(await r2.subscribe("devices/+/status", qos=1)) == [128]
        assert granted(await r2.subscribe("system/#", qos=1)) == [1]


async def test_cross_household_and_impersonating_writes_are_dropped(make_harness):
    """Resident 4 cannot answer household 101's call, and device 5 cannot start a call as device 1."""
    h, t = await secure_harness(make_harness)
    call = (await h.post("/api/mqtt/call", {"device_id": "1"}, t["device-1"]))[1]["data"]
    answer = json.dumps({"call_info": {"call_id": call["call_id"], "action": "answered"}})
    async with h.mqtt(**login(t, "resident-4")) as r4, h.mqtt(**login(t, "device-5")) as d5:
        await r4.publish("users/2/calls/control", answer, qos=1)
        await r4.publish("users/4/calls/control", answer, qos=1)
        await d5.publish("calls/request/1", json.dumps({"household_number": "101"}), qos=1)
    await quiet(0.3)  # none of the forged messages changes the call
    status, resp = await h.get(f"/api/mqtt/session?call_id={call['call_id']}", "test-admin-token-0123456789abcdef")
    assert status == 200
    assert resp["data"]["status"] != "connected"
    assert h.svc.calls.active_count == 1


async def test_will_topic_outside_the_publish_acl_is_refused_at_connect(make_harness):
    """A resident's Will aimed at another household's control topic gets CONNACK 5; its own topic is fine."""
    h, t = await secure_harness(make_harness)
    raw = await Raw.open(h.server.mqtt_port)
    will = ("users/4/calls/control", b'{"call_info":{"call_id":"x","action":"rejected"}}', 1, False)
    assert await raw.connack(connect("resident-2", "2", t["resident-2"], will=will)) == 5
    await raw.close()
    raw = await Raw.open(h.server.mqtt_port)
    assert await raw.connack(connect("resident-2", "2", t["resident-2"], will=("users/2/calls/control", b"{}", 1,
                                                                               False))) == 0
    await raw.close()


async def test_sys_topics_are_for_admins_only(make_harness):
    """`$SYS/#` is refused to residents and devices and granted to the admin principal."""
    h, t = await secure_harness(make_harness)
    async with h.mqtt(**login(t, "resident-2")) as r2, h.mqtt(**login(t, "device-1")) as d1:
        assert granted(await r2.subscribe("$SYS/#", qos=0)) == [128]
        assert granted(await d1.subscribe("$SYS/broker/uptime", qos=0)) == [128]
    async with h.mqtt("admin", "admin", "test-admin-token-0123456789abcdef") as admin:
        assert granted(await admin.subscribe("$SYS/#", qos=0)) == [0]


async def test_configured_rule_replaces_the_default_and_is_not_widened(make_harness):
    """With `acl.roles.resident.subscribe: [flat/%u/+]`, `flat/2/x` and `flat/2/+` pass but `flat/2/#` fails."""
    h, t = await secure_harness(make_harness, acl={"roles": {"resident": {"publish": [], "subscribe": ["flat/%u/+"]}}})
    async with h.mqtt(**login(t, "resident-2")) as r2:
        assert granted(await r2.subscribe("flat/2/x", qos=0)) == [0]
        assert granted(await r2.subscribe("flat/2/+", qos=0)) == [0]
        assert granted(await r2.subscribe("flat/2/#", qos=0)) == [128]
        assert granted(await r2.subscribe("users/2/#", qos=0)) == [128]


async def test_subscriptions_per_client_are_capped(make_harness):
    """Past `max_subscriptions_per_client` a new filter is refused; unsubscribing frees a slot."""
    h, t = await secure_harness(make_harness, limits={"max_subscriptions_per_client": 2})
    async with h.mqtt(**login(t, "resident-2")) as r2:
        assert granted(await r2.subscribe("users/2/a", qos=0)) == [0]
        assert granted(await r2.subscribe("users/2/b", qos=0)) == [0]
        assert granted(await r2.subscribe("users/2/a", qos=1)) == [1]  # re-subscribing is not a new one
        assert granted(await r2.subscribe("users/2/c", qos=0)) == [128]
        await r2.unsubscribe("users/2/a")
        assert granted(await r2.subscribe("users/2/c", qos=0)) == [0]


async def test_deny_patterns_and_an_anonymous_rule(make_harness):
    """`acl.anonymous` restricts local-only clients, and `deny` refuses a filter a broader pattern allows."""
    h = await make_harness(acl={"anonymous": {"publish": ["#"], "subscribe": ["#"], "deny": ["test/nosubscribe"]}})
    async with h.mqtt("anon") as c:
        assert granted(await c.subscribe("test/nosubscribe", qos=0)) == [128]
        assert granted(await c.subscribe("test/other", qos=0)) == [0]
        assert granted(await c.subscribe("#", qos=0)) == [0]
        assert granted(await c.subscribe("$SYS/#", qos=0)) == [128]


async def test_a_flood_of_refused_publishes_is_not_a_log_flood(make_harness, caplog):
    """500 QoS 1 publishes the ACL refuses give a few log lines, not 500 or 1,000, and the client is still served."""
    import logging

    h, t = await secure_harness(make_harness)
    with caplog.at_level(logging.INFO):
        async with h.mqtt(**login(t, "resident-2")) as r2:
            for i in range(500):
                await r2.publish("users/3/calls/control", f'{{"n":{i}}}', qos=1)
            assert granted(await r2.subscribe("users/2/#", qos=1)) == [1]
    lines = [r for r in caplog.records if "users/3/calls/control" in r.getMessage()]
    assert 1 <= len(lines) <= 4, [r.getMessage() for r in lines][:6]
