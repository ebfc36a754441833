"""Our plugins follow sessions through `hooks.TracksSessions`, synchronously: with only our plugins loaded, a
client's connect, subscribe, unsubscribe and disconnect fire no amqtt event (each of which costs a task per
listening plugin), and what the plugins keep from those hooks is still right (presence, persisted subscriptions).
An integrator's amqtt plugin still gets amqtt's events (tests/mqtt/test_amqtt_plugins.py)."""

from __future__ import annotations

import pytest
from amqtt.events import BrokerEvents

from broker.mqtt.hooks import TracksSessions
from plugins.call_router import identify

SESSION_EVENTS = {str(e) for e in (BrokerEvents.CLIENT_CONNECTED, BrokerEvents.CLIENT_DISCONNECTED,
                                   BrokerEvents.CLIENT_SUBSCRIBED, BrokerEvents.CLIENT_UNSUBSCRIBED,
                                   BrokerEvents.RETAINED_MESSAGE)}


async def test_our_plugins_take_session_hooks_not_amqtt_events(harness):
    broker = harness.server.broker
    trackers = [p for p in broker.plugins_manager.plugins if isinstance(p, TracksSessions)]
    assert {type(p).__name__ for p in trackers} >= {"CallPlugin", "PersistencePlugin", "TopicAclPlugin"}
    assert not SESSION_EVENTS & broker._plugin_hooks().events  # no amqtt event task per connect, subscribe, ...


def _plugin(harness, name: str):
    found = [p for p in harness.server.broker.plugins_manager.plugins if type(p).__name__ == name]
    assert len(found) == 1
    return found[0]


async def test_presence_and_persisted_subscriptions_follow_the_hooks(harness):
    """A device goes online and offline (the call plugin's presence) and a persistent session's subscription is
    stored and removed (the persistence plugin), through the hooks."""
    presence = _plugin(harness, "CallPlugin").presence
    db = _plugin(harness, "PersistencePlugin").persistence.db
    party = identify(None, "device-D1")
    assert party is not None

    def stored() -> list[tuple[str, int]]:
        return [sub for s in db.load() if s.client_id == "device-D1" for sub in s.subscriptions]

    async with harness.mqtt("device-D1", clean=False) as dev:
        await harness.until(lambda: "device-D1" in presence.clients(party), what="device online")
        await dev.subscribe("devices/D1/#", qos=1)
        await harness.until(lambda: ("devices/D1/#", 1) in stored(), what="subscription stored")
        await dev.unsubscribe("devices/D1/#")
        await harness.until(lambda: not stored(), what="subscription removed")
    await harness.until(lambda: "device-D1" not in presence.clients(party), what="device offline")


async def test_a_second_puback_barrier_is_refused_at_start(make_harness):
    """`hooks.AcknowledgesAfter`: one per broker; a second plugin implementing it fails the start, naming both."""
    with pytest.raises(RuntimeError, match="CallPlugin and SecondBarrier"):
        await make_harness(mqtt={"plugins": {"tests.mqtt.amqtt_event_probe.SecondBarrier": {}}})


async def test_subscriptions_are_kept_once_in_the_index(harness):
    """The subscription index is the one record of who subscribed to what: amqtt's `subscriptions` (its $SYS plugin
    counts them) is built from it when asked, and no second per-filter list is kept beside it."""
    broker = harness.server.broker
    async with harness.mqtt("sub-a") as a, harness.mqtt("sub-b") as b:
        await a.subscribe("devices/+/status", qos=1)
        await b.subscribe("devices/+/status", qos=0)
        await b.subscribe("devices/1/#", qos=1)
        listing = broker.subscriptions
        assert sorted((s.client_id, q) for s, q in listing["devices/+/status"]) == [("sub-a", 1), ("sub-b", 0)]
        assert [(s.client_id, q) for s, q in listing["devices/1/#"]] == [("sub-b", 1)]
        assert broker._subscriptions == {}  # amqtt's own list stays empty: nothing is kept twice
        assert len(broker._index) == 3
        await b.unsubscribe("devices/+/status")
        await harness.until(lambda: [s.client_id for s, _ in broker.subscriptions.get("devices/+/status", [])]
                            == ["sub-a"], what="unsubscribed")


async def test_deliveries_skip_an_acl_that_decided_at_subscribe(make_harness):
    """`FiltersTopicsSync.checks_receive = False` (our ACL: RECEIVE was decided at SUBSCRIBE): the ACL is asked once
    per PUBLISH, not once per subscriber and message; the publish ACL still refuses what it must."""
    from tests.support.security import secure_harness

    h, tokens = await secure_harness(make_harness)
    hooks = h.server.broker._plugin_hooks()
    assert len(hooks.sync_checks) == 1
    assert hooks.receive_checks == []
    acl = _plugin(h, "TopicAclPlugin")
    refused = acl.refused
    async with h.mqtt("device-1", username="1", password=tokens["device-1"]) as dev:
        await dev.publish("users/2/calls/incoming", b"{}", qos=1)  # not a device's topic
        await h.until(lambda: acl.refused == refused + 1, what="the publish ACL refused it")
