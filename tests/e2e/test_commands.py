"""The resident command table over MQTT and its REST twins: `call_status`, and unknown commands answered by name."""

from __future__ import annotations

import json

from broker.core.commands import COMMANDS
from tests.support.security import secure_harness


def _reply(request_id: str):
    return lambda t, b: t == "users/2/calls/control" and isinstance(b, dict) and b.get("request_id") == request_id


async def test_call_status_over_mqtt_shows_a_ringing_call(harness, party):
    """An app that starts mid-ring asks `{"command":"call_status"}` and gets the ringing call on its control topic."""
    r2 = await party("resident", "2")
    data = await harness.start_call("1")
    await r2.client.publish("users/2/commands", json.dumps({"command": "call_status", "request_id": "s1"}), qos=1)
    _, body = await r2.wait_for(_reply("s1"))
    assert body["call_info"]["action"] == "call_status"
    assert body["resident_id"] == "2"
    calls = body["call_status"]["calls"]
    assert [c["call_id"] for c in calls] == [data["call_id"]]
    assert calls[0]["status"] == "ringing"
    assert calls[0]["tencen_rtc"]["user_id"] == "resident_2"


async def test_call_status_is_empty_once_the_call_ended(harness, party):
    """After the device cancels, the same command answers an empty list."""
    r2 = await party("resident", "2")
    data = await harness.start_call("1")
    status, _ = await harness.post("/api/mqtt/controller/device",
                                   {"call_info": {"call_id": data["call_id"], "action": "cancelled"}})
    assert status == 200
    await r2.client.publish("users/2/commands", json.dumps({"command": "call_status", "request_id": "s2"}), qos=1)
    _, body = await r2.wait_for(_reply("s2"))
    assert body["call_status"]["calls"] == []


async def test_rest_twin_answers_what_the_command_answers(harness, party):
    """`GET /api/residents/{id}/calls/active` is the same handler: the same calls, the same fields."""
    r2 = await party("resident", "2")
    data = await harness.start_call("1")
    status, resp = await harness.get("/api/residents/2/calls/active")
    assert status == 200
    await r2.client.publish("users/2/commands", json.dumps({"command": "call_status", "request_id": "s3"}), qos=1)
    _, body = await r2.wait_for(_reply("s3"))
    assert resp["data"] == body["call_status"]
    assert [c["call_id"] for c in resp["data"]["calls"]] == [data["call_id"]]


async def test_resident_of_another_household_sees_none_of_the_call(harness):
    """Resident 4 (household 102) is not rung by device 1's call: its active list is empty; unknown resident 404."""
    await harness.start_call("1")
    status, resp = await harness.get("/api/residents/4/calls/active")
    assert status == 200
    assert resp["data"]["calls"] == []
    status, resp = await harness.get("/api/residents/99/calls/active")
    assert status == 404


async def test_unknown_command_is_named_with_the_known_ones(harness, party):
    """`{"command":"mute"}` is answered 400 `unknown_command` listing every command the box knows."""
    r2 = await party("resident", "2")
    await r2.client.publish("users/2/commands", json.dumps({"command": "mute", "request_id": "m1"}), qos=1)
    _, body = await r2.wait_for(_reply("m1"))
    assert body["error"]["code"] == 400
    assert body["error"]["reason"] == "unknown_command"
    for name in COMMANDS:
        assert name in body["error"]["message"]
    assert "'mute'" in body["error"]["message"]


async def test_a_body_without_a_command_is_unknown_command(harness, party):
    """No `command` field is not an unlock by default: it is `unknown_command` too."""
    r2 = await party("resident", "2")
    await r2.client.publish("users/2/commands", json.dumps({"device_id": "1", "request_id": "m2"}), qos=1)
    _, body = await r2.wait_for(_reply("m2"))
    assert body["error"]["reason"] == "unknown_command"
    assert "missing" in body["error"]["message"]


async def test_call_status_rest_twin_is_the_residents_own(make_harness):
    """Authenticated mode: resident 3's token may not read resident 2's active calls; resident 2's may."""
    h, tokens = await secure_harness(make_harness)
    status, resp = await h.get("/api/residents/2/calls/active", tokens["resident-3"])
    assert status == 403
    status, resp = await h.get("/api/residents/2/calls/active", tokens["resident-2"])
    assert status == 200
    assert resp["data"] == {"resident_id": "2", "calls": []}
