"""A call end to end: real broker, real MQTT clients, real HTTP, real sqlite."""

from __future__ import annotations

import asyncio
import json
import re

from broker.core.trtc import verify_user_sig
from tests.support.inbox import is_ctl

KEY = "test-trtc-secret"


async def test_call_rings_every_resident_with_valid_credentials(harness, party):
    """POST /api/mqtt/call rings residents 2 and 3, each with its own valid UserSig."""
    r2, r3 = await party("resident", "2"), await party("resident", "3")
    data = await harness.start_call("1", timestamp=1651234567890)
    assert re.fullmatch(r"call-\d{8}-[0-9a-f]{12}", data["call_id"])
    assert data["target_resident_ids"] == ["2", "3"]
    assert data["call_info"] == {"call_id": data["call_id"], "action": "initiated", "timestamp": 1651234567890}
    rtc = data["tencen_rtc"]
    assert rtc["user_id"] == "device_1"
    assert rtc["room_id"] == data["call_id"]
    assert rtc["room_id_type"] == "string"
    assert verify_user_sig(rtc["user_sig"], KEY).identifier == "device_1"
    for rid, inbox in (("2", r2), ("3", r3)):
        topic, body = await inbox.wait_for(lambda t, b: t.endswith("/calls/incoming"))
        assert topic == f"users/{rid}/calls/incoming"
        assert body["call_id"] == data["call_id"]
        assert body["device_id"] == "1"
        assert body["household_number"] == "101"
        assert body["call_info"]["action"] == "initiated"
        assert body["ring_timeout_s"] == 30
        assert body["tencen_rtc"]["user_id"] == f"resident_{rid}"
        assert verify_user_sig(body["tencen_rtc"]["user_sig"], KEY).identifier == f"resident_{rid}"


async def test_answer_over_mqtt_connects_and_cancels_the_other(harness, party):
    """Resident 2 answers on its control topic; the device hears it, resident 3 is cancelled."""
    dev, r2, r3 = await party("device", "1"), await party("resident", "2"), await party("resident", "3")
    call_id = (await harness.start_call())["call_id"]
    await r2.wait_for(lambda t, b: t.endswith("incoming"))
    await r2.client.publish("users/2/calls/control", json.dumps(
        {"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
    _, body = await dev.wait_for(is_ctl("answered"))
    assert body["resident_id"] == "2"
    assert body["call_info"]["call_id"] == call_id
    _, body = await r3.wait_for(is_ctl("cancelled"))
    assert body["call_info"]["reason"] == "answered_elsewhere"
    status, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}")
    assert status == 200
    assert resp["data"]["status"] == "connected"
    assert resp["data"]["resident_id"] == "2"
    # A second answer is a conflict, over REST and over MQTT.
    status, resp = await harness.post("/api/mqtt/controller/resident",
                                      {"resident_id": "3", "call_info": {"call_id": call_id, "action": "answered"}})
    assert status == 409
    assert resp["code"] == 409
    assert resp["data"] == {"reason": "invalid_transition"}
    await r3.client.publish("users/3/calls/control", json.dumps(
        {"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
    _, err = await r3.wait_for(lambda t, b: "error" in b)
    assert err["error"]["code"] == 409
    assert err["call_info"]["call_id"] == call_id


async def test_hangup_ends_the_call_and_history_records_it(harness, party):
    """A connected call hung up by the device tells the resident and lands in history and call_events."""
    r2 = await party("resident", "2")
    call_id = (await harness.start_call())["call_id"]
    assert (await harness.post("/api/mqtt/controller/resident",
                               {"resident_id": "2", "call_info": {"call_id": call_id, "action": "answered"}}))[0] == 200
    status, _ = await harness.post("/api/mqtt/controller/device",
                                   {"call_info": {"call_id": call_id, "action": "hangup", "reason": "done"}})
    assert status == 200
    _, body = await r2.wait_for(is_ctl("hangup"))
    assert body["call_info"]["reason"] == "done"
    status, resp = await harness.get("/api/calls?household_number=101")
    assert status == 200
    assert resp["data"][0]["call_id"] == call_id
    assert resp["data"][0]["status"] == "ended"
    assert resp["data"][0]["end_reason"] == "hangup"
    events = [(e["actor"], e["action"], e["to_state"]) for e in harness.svc.store.call_events(call_id)]
    assert events == [("device:1", "initiated", "ringing"), ("resident:2", "answered", "connected"),
                      ("device:1", "hangup", "ended")]
    # Acting on an ended call is a conflict; repeating the same action is a quiet success.
    assert (await harness.post("/api/mqtt/controller/device",
                               {"call_info": {"call_id": call_id, "action": "cancelled"}}))[0] == 409
    assert (await harness.post("/api/mqtt/controller/device",
                               {"call_info": {"call_id": call_id, "action": "hangup"}}))[0] == 200


async def test_device_cancel_over_mqtt_request(harness, party):
    """A call started by MQTT calls/request is answered on the device's control topic and can be cancelled."""
    dev, r2 = await party("device", "1"), await party("resident", "2")
    await dev.client.publish("calls/request/1", json.dumps({"request_id": "rq-1", "timestamp": 1651234567890}), qos=1)
    _, reply = await dev.wait_for(lambda t, b: b.get("request_id") == "rq-1")
    assert reply["origin"] == "server"
    assert reply["target_resident_ids"] == ["2", "3"]
    assert reply["tencen_rtc"]["user_id"] == "device_1"
    call_id = reply["call_id"]
    await r2.wait_for(lambda t, b: t.endswith("incoming") and b["call_id"] == call_id)
    await dev.client.publish("devices/1/calls/control", json.dumps(
        {"call_info": {"call_id": call_id, "action": "cancelled", "reason": "user_cancelled"}}), qos=1)
    _, body = await r2.wait_for(is_ctl("cancelled"))
    assert body["call_info"]["reason"] == "user_cancelled"
    _, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}")
    assert resp["data"]["status"] == "ended"
    assert resp["data"]["end_reason"] == "cancelled"


async def test_member_reject_policy(harness, party):
    """Under the default policy each reject tells the device; the last one ends the call `rejected`."""
    dev = await party("device", "1")
    call_id = (await harness.start_call())["call_id"]
    for rid in ("2", "3"):
        status, _ = await harness.post("/api/mqtt/controller/resident", {
            "resident_id": rid, "call_info": {"call_id": call_id, "action": "rejected", "reason": "user_busy"}})
        assert status == 200
        _, body = await dev.wait_for(lambda t, b, rid=rid: is_ctl("rejected")(t, b) and b["resident_id"] == rid)
        assert body["call_info"]["reason"] == "user_busy"
    _, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}")
    assert resp["data"]["end_reason"] == "rejected"


async def test_household_reject_policy(make_harness):
    """Under `household`, one reject ends the call and the other resident hears rejected_elsewhere."""
    h = await make_harness(calls={"reject_policy": "household"})
    async with h.mqtt("resident-3") as c3:
        await c3.subscribe("users/3/#", qos=1)
        call_id = (await h.start_call())["call_id"]
        status, _ = await h.post("/api/mqtt/controller/resident",
                                 {"resident_id": "2", "call_info": {"call_id": call_id, "action": "rejected"}})
        assert status == 200
        async with asyncio.timeout(5):
            async for msg in c3.messages:
                body = json.loads(msg.payload)
                if body.get("call_info", {}).get("action") == "cancelled":
                    assert body["call_info"]["reason"] == "rejected_elsewhere"
                    break
    _, resp = await h.get(f"/api/mqtt/session?call_id={call_id}")
    assert resp["data"]["status"] == "ended"
    assert resp["data"]["end_reason"] == "rejected"


async def test_ring_timeout_on_the_server(make_harness):
    """An unanswered call ends `timeout` after calls.ring_timeout_s and everybody is told."""
    h = await make_harness(calls={"ring_timeout_s": 0.3})
    async with h.mqtt("device-1") as dev:
        await dev.subscribe("devices/1/#", qos=1)
        call_id = (await h.start_call())["call_id"]
        async with asyncio.timeout(5):
            async for msg in dev.messages:
                body = json.loads(msg.payload)
                if body.get("call_info", {}).get("action") == "timeout":
                    break
    _, resp = await h.get(f"/api/mqtt/session?call_id={call_id}")
    assert resp["data"]["status"] == "ended"
    assert resp["data"]["end_reason"] == "timeout"
    assert h.svc.calls.active_count == 0


async def test_max_duration_ends_a_connected_call(make_harness):
    """A connected call longer than calls.max_duration_s ends `max_duration`."""
    h = await make_harness(calls={"max_duration_s": 0.3})
    call_id = (await h.start_call())["call_id"]
    await h.post("/api/mqtt/controller/resident", {"resident_id": "2", "call_info": {"call_id": call_id,
                                                                                    "action": "answered"}})
    for _ in range(50):
        _, resp = await h.get(f"/api/mqtt/session?call_id={call_id}")
        if resp["data"]["status"] == "ended":
            break
        await asyncio.sleep(0.05)
    assert resp["data"]["end_reason"] == "max_duration"
    assert resp["data"]["ended_at"] is not None


async def test_end_session_forces_hangup(harness, party):
    """POST /api/mqtt/end-session ends the call `forced` and every party hears hangup with the reason."""
    dev, r2 = await party("device", "1"), await party("resident", "2")
    call_id = (await harness.start_call())["call_id"]
    status, resp = await harness.post("/api/mqtt/end-session", {"call_id": call_id, "reason": "call_completed"})
    assert status == 200
    assert resp == {"code": 0, "message": "成功", "data": None}
    for inbox in (dev, r2):
        _, body = await inbox.wait_for(is_ctl("hangup"))
        assert body["call_info"]["reason"] == "call_completed"
    _, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}")
    assert resp["data"]["end_reason"] == "forced"
    assert (await harness.post("/api/mqtt/end-session", {"call_id": call_id}))[0] == 409


async def test_busy_device_and_household(harness):
    """A device in a call, or a household already ringing, gets 409 for a new call."""
    await harness.start_call("1")
    status, resp = await harness.post("/api/mqtt/call", {"device_id": "1"})
    assert status == 409
    assert "already in call" in resp["message"]
    harness.svc.directory.set_device_kind("5", "lobby", None)  # a door station may only ring its own household
    status, resp = await harness.post("/api/mqtt/call", {"device_id": "5", "household_number": "101"})
    assert status == 409
    assert "household" in resp["message"]
    # Another household is free.
    assert (await harness.post("/api/mqtt/call", {"device_id": "5"}))[0] == 200


async def test_older_request_shapes(harness):
    """`{device_device_id, target_resident_id}` and /api/rtc|trtc/call ring exactly one resident."""
    status, resp = await harness.post("/api/mqtt/call", {"device_device_id": "1", "target_resident_id": "2",
                                                         "timestamp": 1651234567890})
    assert status == 200
    assert resp["data"]["target_resident_ids"] == ["2"]
    await harness.post("/api/mqtt/end-session", {"call_id": resp["data"]["call_id"]})
    for path in ("/api/rtc/call", "/api/trtc/call"):
        status, resp = await harness.post(path, {"device_id": 1, "resident_id": 3})
        assert status == 200, resp
        assert resp["data"]["target_resident_ids"] == ["3"], resp
        # With one target, an anonymous local resident need not name itself.
        status, _ = await harness.post("/api/mqtt/controller/resident",
                                       {"call_info": {"call_id": resp["data"]["call_id"], "action": "rejected"}})
        assert status == 200


async def test_resident_session_view_has_its_own_credentials(harness):
    """GET /api/mqtt/session gives the device's credentials, or the resident's when a resident asks."""
    call_id = (await harness.start_call())["call_id"]
    _, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}")
    d = resp["data"]
    assert d["tencen_rtc"]["user_id"] == "device_1"
    assert d["resident_id"] is None
    assert d["status"] == "ringing"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["start_time"])
    assert d["household_number"] == "101"
    assert d["target_resident_ids"] == ["2", "3"]
    assert d["end_reason"] is None
    _, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}&resident_id=3")
    assert resp["data"]["tencen_rtc"]["user_id"] == "resident_3"
    assert verify_user_sig(resp["data"]["tencen_rtc"]["user_sig"], KEY).identifier == "resident_3"
    status, resp = await harness.get("/api/calls/active?resident_id=2")
    assert status == 200
    assert [c["call_id"] for c in resp["data"]] == [call_id]


async def test_websocket_listener_carries_calls(harness):
    """A resident connected over MQTT-over-WebSocket gets its incoming call."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", harness.server.ws_port, identifier="resident-2",
                              transport="websockets", websocket_path="/mqtt") as c:
        await c.subscribe("users/2/#", qos=1)
        call_id = (await harness.start_call())["call_id"]
        async with asyncio.timeout(5):
            async for msg in c.messages:
                assert str(msg.topic) == "users/2/calls/incoming"
                assert json.loads(msg.payload)["call_id"] == call_id
                break


async def test_ringing_hangups_and_resident_timeout(harness, party):
    """A resident's hangup while ringing is relayed as a reject, its timeout as `timeout`; a device hangup cancels."""
    dev, r3 = await party("device", "1"), await party("resident", "3")
    call_id = (await harness.start_call())["call_id"]
    ctl = "/api/mqtt/controller/"
    assert (await harness.post(ctl + "resident", {"resident_id": "2",
                                                  "call_info": {"call_id": call_id, "action": "hangup"}}))[0] == 200
    _, body = await dev.wait_for(is_ctl("rejected"))
    assert body["resident_id"] == "2"
    assert body["call_info"]["reason"] == "hangup"
    assert (await harness.post(ctl + "resident", {"resident_id": "3",
                                                  "call_info": {"call_id": call_id, "action": "timeout"}}))[0] == 200
    _, body = await dev.wait_for(lambda t, b: is_ctl("timeout")(t, b) and b["resident_id"] == "3")
    _, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}")
    assert resp["data"]["end_reason"] == "rejected"
    call_id = (await harness.start_call())["call_id"]
    assert (await harness.post(ctl + "device", {"call_info": {"call_id": call_id, "action": "hangup"}}))[0] == 200
    _, body = await r3.wait_for(lambda t, b: is_ctl("cancelled")(t, b) and b["call_info"]["call_id"] == call_id)
    _, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}")
    assert resp["data"]["end_reason"] == "cancelled"


async def test_resident_hangup_of_connected_call_tells_device(harness, party):
    """The answerer hanging up tells the device, over MQTT."""
    dev, r2 = await party("device", "1"), await party("resident", "2")
    call_id = (await harness.start_call())["call_id"]
    for action in ("answered", "hangup"):
        await r2.client.publish("users/2/calls/control", json.dumps(
            {"call_info": {"call_id": call_id, "action": action}}), qos=1)
    _, body = await dev.wait_for(is_ctl("hangup"))
    assert body["call_info"]["call_id"] == call_id
    assert body["resident_id"] == "2"
    _, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}")
    assert resp["data"]["status"] == "ended"
    assert resp["data"]["end_reason"] == "hangup"
