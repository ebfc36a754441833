"""Many sites on one external broker: each bridged instance mounts its site under `sites/{site_id}/`; two sites
with the same device and resident ids never cross-talk (issue 23 item 4)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

from broker.bridge import Bridge, BridgedServer, site_prefix
from broker.config import ConfigError
from tests.mosquitto_helpers import Mosquitto, needs_mosquitto
from tests.support.harness import Harness, make_settings
from tests.support.inbox import Inbox


@pytest.fixture
async def sites(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[dict[str, Harness]]:
    """Sites `a` and `b` on one Mosquitto, each its own instance and data dir, with the same directory."""
    out: dict[str, Harness] = {}
    for site in ("a", "b"):
        data = tmp_path / site
        data.mkdir()
        server = BridgedServer(make_settings(data), f"mqtt://127.0.0.1:{mosquitto.port}", site_id=site)
        await server.start()
        out[site] = Harness(server, aiohttp.ClientSession())  # type: ignore[arg-type]
    yield out
    for h in out.values():
        await h.http.close()
        await h.server.stop()


async def listen(port: int, client_id: str, flt: str) -> tuple[aiomqtt.Client, Inbox]:
    client = aiomqtt.Client("127.0.0.1", port, identifier=client_id)
    await client.__aenter__()
    await client.subscribe(flt, qos=1)
    return client, Inbox(client)


def incoming(t: str, b: object) -> bool:
    return t.endswith("/calls/incoming")


@needs_mosquitto
async def test_same_device_id_in_two_sites_starts_one_call_in_its_own_site(sites, mosquitto):
    """Device 1 of site a requests a call: only site a's service answers and rings site a's residents."""
    port = mosquitto.port
    dev_a, dev_a_in = await listen(port, "a-device-1", "sites/a/devices/1/#")
    res_a, res_a_in = await listen(port, "a-resident-2", "sites/a/users/2/#")
    res_b, res_b_in = await listen(port, "b-resident-2", "sites/b/users/2/#")
    dev_b, dev_b_in = await listen(port, "b-device-1", "sites/b/devices/1/#")
    spy, spy_in = await listen(port, "spy", "#")
    try:
        await dev_a.publish("sites/a/calls/request/1", json.dumps({"household_number": "101", "request_id": "rq-a"}),
                            qos=1)
        topic, reply = await dev_a_in.wait_for(lambda t, b: isinstance(b, dict) and b.get("request_id") == "rq-a")
        assert topic.startswith("sites/a/devices/1/")
        topic, ring = await res_a_in.wait_for(incoming)
        assert topic == "sites/a/users/2/calls/incoming"
        assert ring["call_id"] == reply["call_id"]
        await asyncio.sleep(0.5)  # what would cross over has had time to arrive
        assert sites["a"].svc.calls.active_count == 1
        assert sites["b"].svc.calls.active_count == 0, "site b started a call for site a's device"
        assert res_b_in.messages == []
        assert dev_b_in.messages == []
        # every message on the broker lives under a site's mount point
        assert spy_in.messages
        assert all(t.startswith(("sites/a/", "sites/b/")) for t, _, _ in spy_in.messages)
    finally:
        for client, inbox in ((dev_a, dev_a_in), (res_a, res_a_in), (res_b, res_b_in), (dev_b, dev_b_in),
                              (spy, spy_in)):
            await inbox.close()
            await client.__aexit__(None, None, None)


@needs_mosquitto
async def test_a_resident_of_site_b_cannot_answer_site_a_s_call(sites, mosquitto):
    """Site b's resident 2 answering site a's call id on its own prefix reaches site b only: 404 there, a rings on."""
    port = mosquitto.port
    res_a, res_a_in = await listen(port, "a-resident-2", "sites/a/users/2/#")
    res_b, res_b_in = await listen(port, "b-resident-2", "sites/b/users/2/#")
    try:
        call_id = (await sites["a"].start_call("1"))["call_id"]
        await res_a_in.wait_for(incoming)
        await res_b.publish("sites/b/users/2/calls/control", json.dumps(
            {"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
        _, err = await res_b_in.wait_for(lambda t, b: t == "sites/b/users/2/calls/control"
                                          and b.get("origin") == "server")
        assert "404" in json.dumps(err, ensure_ascii=False), err
        status, resp = await sites["a"].get(f"/api/mqtt/session?call_id={call_id}")
        assert status == 200
        assert resp["data"]["status"] == "ringing"
        # the same action under site a's prefix is served by site a
        await res_a.publish("sites/a/users/2/calls/control", json.dumps(
            {"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
        for _ in range(50):
            status, resp = await sites["a"].get(f"/api/mqtt/session?call_id={call_id}")
            if resp["data"]["status"] == "connected":
                break
            await asyncio.sleep(0.1)
        assert resp["data"]["status"] == "connected"
    finally:
        for client, inbox in ((res_a, res_a_in), (res_b, res_b_in)):
            await inbox.close()
            await client.__aexit__(None, None, None)


def test_a_site_subscribes_only_its_prefix(tmp_path):
    """Every filter of a site's service (shared or not) is under `sites/{site_id}/`; none is a bare wildcard."""
    settings = make_settings(tmp_path)
    from broker.app import build_services
    from broker.bridge import BridgePublisher, parse_broker_url

    pub = BridgePublisher()
    svc = build_services(settings, pub)
    try:
        bridge = Bridge(svc, pub, parse_broker_url("mqtt://127.0.0.1:1"), site_id="tower-7", shared_group="g")
        assert bridge.filters()
        assert all(f.startswith("$share/g/sites/tower-7/") for f in bridge.filters())
        pub.publish("users/2/calls/incoming", b"{}")
        assert pub._queue[-1][0] == "sites/tower-7/users/2/calls/incoming"
    finally:
        svc.calls.close()
        svc.store.close()


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a b", "x" * 65])
def test_site_ids_are_one_plain_topic_level(bad):
    with pytest.raises(ConfigError):
        site_prefix(bad)
