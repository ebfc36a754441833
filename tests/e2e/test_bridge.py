"""Bridge mode: the call service attached to a real Mosquitto as an MQTT client, no embedded broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from broker.bridge import BridgedServer, BridgePublisher, parse_broker_url
from broker.config import ConfigError
from tests.mosquitto_helpers import Mosquitto, needs_mosquitto
from tests.support.harness import Harness, make_settings
from tests.support.inbox import Inbox


@pytest.fixture
async def bridged(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Harness]:
    server = BridgedServer(make_settings(tmp_path), f"mqtt://127.0.0.1:{mosquitto.port}")
    await server.start()
    http = aiohttp.ClientSession()
    yield Harness(server, http)  # type: ignore[arg-type]
    await http.close()
    await server.stop()


@pytest.fixture
async def peers(bridged: Harness) -> AsyncIterator[dict[str, Inbox]]:
    """Device 1 and residents 2 and 3, connected to Mosquitto and subscribed to their own topics."""
    inboxes: dict[str, Inbox] = {}
    clients = []
    for name, flt in (("device-1", "devices/1/#"), ("resident-2", "users/2/#"), ("resident-3", "users/3/#")):
        client = bridged.mqtt(name)
        await client.__aenter__()
        await client.subscribe(flt, qos=1)
        clients.append(client)
        inboxes[name] = Inbox(client)
    yield inboxes
    for client, inbox in zip(clients, inboxes.values(), strict=True):
        await inbox.close()
        await client.__aexit__(None, None, None)


def control(action: str):
    return lambda t, b: t.endswith("/calls/control") and b.get("call_info", {}).get("action") == action


@needs_mosquitto
async def test_mqtt_call_request_through_mosquitto_rings_both_residents(bridged, peers):
    """A device's calls/request on Mosquitto reaches the bridged service, which rings both residents."""
    await peers["device-1"].client.publish("calls/request/1", json.dumps(
        {"household_number": "101", "request_id": "rq-1"}), qos=1)
    _, reply = await peers["device-1"].wait_for(lambda t, b: b.get("request_id") == "rq-1")
    call_id = reply["call_id"]
    for rid in ("2", "3"):
        topic, body = await peers[f"resident-{rid}"].wait_for(lambda t, b: t.endswith("/calls/incoming"))
        assert topic == f"users/{rid}/calls/incoming"
        assert body["call_id"] == call_id
    assert bridged.svc.calls.active_count == 1


@needs_mosquitto
async def test_rest_call_answered_over_mosquitto_cancels_the_other_resident(bridged, peers):
    """POST /api/mqtt/call rings over Mosquitto; resident 2 answers there; the device and resident 3 hear it."""
    call_id = (await bridged.start_call("1"))["call_id"]
    await peers["resident-2"].wait_for(lambda t, b: t.endswith("/calls/incoming"))
    await peers["resident-2"].client.publish("users/2/calls/control", json.dumps(
        {"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
    _, body = await peers["device-1"].wait_for(control("answered"))
    assert body["resident_id"] == "2"
    assert body["call_info"]["call_id"] == call_id
    _, body = await peers["resident-3"].wait_for(control("cancelled"))
    assert body["call_info"]["reason"] == "answered_elsewhere"
    status, resp = await bridged.get(f"/api/mqtt/session?call_id={call_id}")
    assert status == 200
    assert resp["data"]["status"] == "connected"


@needs_mosquitto
async def test_bridge_reconnects_after_the_external_broker_restarts(mosquitto, bridged):
    """When Mosquitto restarts on the same port, the bridge subscribes again and calls work."""
    bridge = bridged.server.bridge
    assert bridge.connected.is_set()
    mosquitto.stop()
    for _ in range(100):
        if not bridge.connected.is_set():
            break
        await asyncio.sleep(0.05)
    assert not bridge.connected.is_set()
    await mosquitto.start()
    await asyncio.wait_for(bridge.connected.wait(), 15)
    async with bridged.mqtt("resident-2") as r2:
        await r2.subscribe("users/2/#", qos=1)
        inbox = Inbox(r2)
        await bridged.start_call("1")
        _, body = await inbox.wait_for(lambda t, b: t.endswith("/calls/incoming"))
        assert body["device_id"] == "1"
        await inbox.close()


def test_publisher_queue_is_bounded_and_drops_the_oldest():
    """While the external broker is away, the publish queue keeps only the newest `max_queued` messages."""
    pub = BridgePublisher(max_queued=3)
    for i in range(5):
        pub.publish(f"t/{i}", b"x", qos=1)
    assert pub.queued == 3
    assert pub.dropped == 2
    assert [m[0] for m in pub._queue] == ["t/2", "t/3", "t/4"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:1883", "mqtt://", "mqtt://host:notaport", "ws://host:1"])
def test_bad_external_broker_urls_are_config_errors(url):
    """Only mqtt[s]://host[:port] URLs are accepted for --external-broker."""
    with pytest.raises(ConfigError):
        parse_broker_url(url)


def test_external_broker_url_carries_credentials_and_default_port():
    """User and password come from the URL's userinfo; the port defaults to 1883."""
    target = parse_broker_url("mqtt://svc:s%40cret@10.0.0.5")
    assert (target.host, target.port, target.username, target.password) == ("10.0.0.5", 1883, "svc", "s@cret")
