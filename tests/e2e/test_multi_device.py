"""Several clients per resident: a phone and a tablet on `users/{id}/...`, end to end."""

from __future__ import annotations

import asyncio
import json

from tests.support.inbox import is_ctl, parties


async def test_answer_on_the_phone_stops_the_tablet_and_names_the_phone(harness):
    """Phone answers over MQTT: tablet, phone, resident 3 and the device all hear it with client_id of the phone."""
    async with parties(harness) as connect:
        dev = await connect("device", "1")
        phone = await connect("resident", "2/phone", topics=["users/2/#"])
        tablet = await connect("resident", "2/tablet", topics=["users/2/#"])
        r3 = await connect("resident", "3")
        call_id = (await harness.start_call())["call_id"]
        for inbox in (phone, tablet):
            await inbox.wait_for(lambda t, b: t == "users/2/calls/incoming" and b["call_id"] == call_id)
        await phone.client.publish("users/2/calls/control", json.dumps(
            {"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
        _, body = await tablet.wait_for(is_ctl("cancelled", "answered_elsewhere"))
        assert body["client_id"] == "resident-2/phone"
        assert body["resident_id"] == "2"
        _, own = await phone.wait_for(is_ctl("cancelled", "answered_elsewhere"))
        assert own["client_id"] == "resident-2/phone"  # the phone sees it took the action itself
        _, body = await dev.wait_for(is_ctl("answered"))
        assert body["client_id"] == "resident-2/phone"
        assert body["resident_id"] == "2"
        _, body = await r3.wait_for(is_ctl("cancelled", "answered_elsewhere"))
        assert body["client_id"] == "resident-2/phone"
        status, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}")
        assert status == 200
        assert resp["data"]["answered_client_id"] == "resident-2/phone"
        events = harness.svc.store.call_events(call_id)
        assert [(e["action"], e["client_id"]) for e in events][1] == ("answered", "resident-2/phone")
        # the device hangs up: the resident's topic hears it, naming the device's client
        await dev.client.publish("devices/1/calls/control", json.dumps(
            {"call_info": {"call_id": call_id, "action": "hangup"}}), qos=1)
        _, body = await tablet.wait_for(is_ctl("hangup"))
        assert body["client_id"] == "device-1"


async def test_reject_on_the_tablet_stops_the_phone(harness):
    """A reject on one client tells the resident's other clients `rejected_elsewhere` with the taker's client id."""
    async with parties(harness) as connect:
        phone = await connect("resident", "2/phone", topics=["users/2/#"])
        tablet = await connect("resident", "2/tablet", topics=["users/2/#"])
        call_id = (await harness.start_call())["call_id"]
        await phone.wait_for(lambda t, b: t.endswith("/incoming"))
        await tablet.client.publish("users/2/calls/control", json.dumps(
            {"call_info": {"call_id": call_id, "action": "rejected", "reason": "busy"}}), qos=1)
        _, body = await phone.wait_for(is_ctl("cancelled", "rejected_elsewhere"))
        assert body["client_id"] == "resident-2/tablet"


async def test_authenticated_clients_with_suffixes(make_harness):
    """With tokens (not anonymous), `resident-2/phone` logs in as resident 2 and its answer names that client."""
    h = await make_harness()
    tok = await h.token("residents", "2")
    async with h.mqtt("resident-2/phone", username="2", password=tok) as phone, \
            h.mqtt("resident-2/tablet", username="2", password=tok) as tablet:
        await tablet.subscribe("users/2/#", qos=1)
        call_id = (await h.start_call())["call_id"]
        await phone.publish("users/2/calls/control", json.dumps(
            {"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
        async with asyncio.timeout(5):
            async for msg in tablet.messages:
                body = json.loads(msg.payload)  # type: ignore[arg-type]
                if msg.topic.matches("users/2/calls/control") and body.get("origin") == "server":
                    assert body["call_info"]["reason"] == "answered_elsewhere"
                    assert body["client_id"] == "resident-2/phone"
                    break


async def test_rest_actions_name_their_client(harness, party):
    """Over REST the body's `client_id` names the acting client (default `{role}-{id}`); another party's is 403."""
    tablet = await party("resident", "2/tablet", topics=["users/2/#"])
    call_id = (await harness.start_call())["call_id"]
    status, resp = await harness.post("/api/mqtt/controller/resident", {
        "resident_id": "2", "client_id": "resident-3/phone", "call_info": {"call_id": call_id, "action": "answered"}})
    assert status == 403
    assert "not a client of resident 2" in resp["message"]
    status, resp = await harness.post("/api/mqtt/controller/resident", {
        "resident_id": "2", "client_id": "x" * 129, "call_info": {"call_id": call_id, "action": "answered"}})
    assert status == 400
    assert resp["message"].startswith("无效的请求参数: client_id")
    status, _ = await harness.post("/api/mqtt/controller/resident", {
        "resident_id": "2", "client_id": "resident-2/web", "call_info": {"call_id": call_id, "action": "answered"}})
    assert status == 200
    _, body = await tablet.wait_for(is_ctl("cancelled", "answered_elsewhere"))
    assert body["client_id"] == "resident-2/web"
    status, _ = await harness.post("/api/mqtt/controller/device", {"call_info": {"call_id": call_id,
                                                                                 "action": "hangup"}})
    assert status == 200
    _, body = await tablet.wait_for(is_ctl("hangup"))
    assert body["client_id"] == "device-1"


async def test_a_single_client_resident_never_hears_cancelled_for_its_own_answer(harness):
    """A resident with one app (the seed's clients): answering tells the device, not the app `cancelled`."""
    async with parties(harness) as connect:
        dev = await connect("device", "1")
        app = await connect("resident", "2", topics=["users/2/#"])
        r3 = await connect("resident", "3")
        call_id = (await harness.start_call())["call_id"]
        await app.wait_for(lambda t, b: t == "users/2/calls/incoming" and b["call_id"] == call_id)
        await app.client.publish("users/2/calls/control", json.dumps(
            {"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
        await dev.wait_for(is_ctl("answered"))
        await r3.wait_for(is_ctl("cancelled", "answered_elsewhere"))  # the other resident stops ringing
        await dev.client.publish("devices/1/calls/control", json.dumps(
            {"call_info": {"call_id": call_id, "action": "hangup"}}), qos=1)
        await app.wait_for(is_ctl("hangup"))
        heard = [b["call_info"]["action"] for b in app.server_msgs("/calls/control")]
        assert heard == ["hangup"]
