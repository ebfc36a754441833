"""Bad input gets the envelope with a clear status and message; the server keeps serving."""

from __future__ import annotations

import json

import pytest

from tests.support.harness import ADMIN


@pytest.mark.parametrize(("path", "raw", "needle"), [
    ("/api/mqtt/call", b"{not json", "not valid JSON"),
    ("/api/mqtt/call", b"[1, 2]", "JSON object"),
    ("/api/mqtt/call", b"{}", "device_id"),
    ("/api/mqtt/call", b'{"device_id": {"x": 1}}', "device_id"),
    ("/api/mqtt/call", b'{"device_id": "1", "timestamp": "soon"}', "timestamp"),
    ("/api/mqtt/controller/resident", b'{"call_info": {"action": "answered"}}', "call_info.call_id"),
    ("/api/mqtt/controller/device", b'{"call_info": "x"}', "call_info"),
    ("/api/mqtt/device/status", b'{"device_id": "1", "battery": 101}', "battery"),
    ("/api/mqtt/device/status", b'{"device_id": "1", "online": "yes"}', "online"),
    ("/api/mqtt/system/message", b'{"type": "n", "level": "fatal", "message": "m"}', "level"),
    ("/api/mqtt/end-session", b'{"reason": "x"}', "call_id"),
    ("/api/admin/residents", b'{"resident_id": "9"}', "household_number"),
])
async def test_bad_bodies_are_400_naming_the_field(harness, path, raw, needle):
    """Malformed or mistyped bodies are a 400 envelope whose message names the problem."""
    status, resp = await harness.post(path, None, raw=raw)
    assert status == 400
    assert resp["code"] == 400
    assert resp["data"] is None
    assert needle in resp["message"], resp["message"]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("post", "/api/mqtt/call", {"device_id": "nope"}),
    ("post", "/api/mqtt/call", {"device_id": "1", "household_number": "999"}),
    ("post", "/api/mqtt/controller/device", {"call_info": {"call_id": "call-x", "action": "hangup"}}),
    ("post", "/api/mqtt/end-session", {"call_id": "call-x"}),
    ("get", "/api/mqtt/session?call_id=call-x", None),
    ("get", "/api/devices/nope/status", None),
    ("post", "/api/mqtt/device/status", {"device_id": "nope"}),
    ("get", "/api/admin/residents/nope", None),
    ("get", "/no/such/path", None),
])
async def test_unknown_ids_are_404(harness, method, path, body):
    """Unknown devices, households, calls and paths are a 404 envelope."""
    status, resp = await (harness.post(path, body) if method == "post" else harness.get(path))
    assert status == 404
    assert resp["code"] == 404
    assert resp["data"] is None


async def test_forbidden_and_unknown_actions(harness):
    """An action outside the party's vocabulary is 403; an unknown action is 400; an outsider is 403."""
    call_id = (await harness.start_call())["call_id"]
    ctl = "/api/mqtt/controller/"
    assert (await harness.post(ctl + "device", {"call_info": {"call_id": call_id, "action": "answered"}}))[0] == 403
    status, resp = await harness.post(ctl + "device", {"call_info": {"call_id": call_id, "action": "explode"}})
    assert status == 400
    assert "action" in resp["message"]
    status, _ = await harness.post(ctl + "resident", {"resident_id": "4",
                                                       "call_info": {"call_id": call_id, "action": "answered"}})
    assert status == 403
    # the admin naming no resident on a call ringing two (an anonymous local caller would act for the household)
    status, resp = await harness.post(ctl + "resident", {"call_info": {"call_id": call_id, "action": "answered"}},
                                      ADMIN)
    assert status == 400
    assert "resident_id" in resp["message"]


async def test_oversize_body_is_refused(harness):
    """A body over http.max_body_bytes is refused with 413 and the server keeps serving."""
    status, resp = await harness.post("/api/mqtt/system/message", None,
                                      raw=json.dumps({"type": "x", "level": "info", "message": "m" * 100_000}).encode())
    assert status == 413
    assert resp["code"] == 413
    assert (await harness.get("/healthz"))[0] == 200


async def test_bad_mqtt_payloads_get_an_error_on_the_control_topic(harness, party):
    """Malformed MQTT call payloads are answered on the sender's control topic; nothing else breaks."""
    dev = await party("device", "1")
    r2 = await party("resident", "2")
    await dev.client.publish("calls/request/1", b"\xff\xfe not json", qos=1)
    _, err = await dev.wait_for(lambda t, b: isinstance(b, dict) and "error" in b)
    assert err["error"]["code"] == 400
    assert "JSON" in err["error"]["message"]
    assert err["origin"] == "server"
    await r2.client.publish("users/2/calls/control", json.dumps({"call_info": {"call_id": 5}}), qos=1)
    _, err = await r2.wait_for(lambda t, b: isinstance(b, dict) and "error" in b)
    assert err["error"]["code"] == 400
    await r2.client.publish("users/2/calls/control", json.dumps(
        {"call_info": {"call_id": "call-unknown", "action": "answered"}}), qos=1)
    _, err = await r2.wait_for(lambda t, b: isinstance(b, dict) and b.get("error", {}).get("code") == 404)
    assert err["call_info"]["call_id"] == "call-unknown"
    await dev.client.publish("calls/request/1", json.dumps({"household_number": "nowhere"}), qos=1)
    _, err = await dev.wait_for(lambda t, b: isinstance(b, dict) and b.get("error", {}).get("code") == 404)
    # The server still serves a good call.
    data = await harness.start_call()
    _, body = await r2.wait_for(lambda t, b: t.endswith("incoming"))
    assert body["call_id"] == data["call_id"]
    assert harness.svc.store.get_call("call-unknown") is None


async def test_nothing_half_written_on_rejected_requests(harness):
    """Refused requests leave no rows behind."""
    await harness.post("/api/mqtt/call", {"device_id": "nope"})
    await harness.post("/api/admin/residents", {"resident_id": "9", "household_number": "nowhere"})
    assert harness.svc.store.list_calls({}, 10) == []
    assert harness.svc.store.get("residents", "9") is None
