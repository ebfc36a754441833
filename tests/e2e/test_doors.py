"""Door unlock end to end: a resident opens the calling door station over REST or MQTT; the station acks."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.doors import station
from tests.support.harness import ADMIN
from tests.support.inbox import Inbox, parties
from tests.support.security import login, secure_harness
from tests.support.waits import quiet


def ctl(action):
    return lambda t, b: t.endswith("/calls/control") and b.get("call_info", {}).get("action") == action


async def test_unlock_over_rest_opens_the_door_ends_the_call_and_is_recorded(harness):
    """Resident 2 opens device 1's relay 1 while it rings: the station gets the command, the call ends
    `door_opened`, everyone still in it is told, and the event, session and history say so."""
    async with parties(harness) as connect, station(harness) as st:
        r2, r3 = await connect("resident", "2"), await connect("resident", "3")
        call_id = (await harness.start_call())["call_id"]
        status, resp = await harness.post("/api/doors/unlock", {"device_id": "1", "call_id": call_id,
                                                                "resident_id": "2"})
        assert status == 200, resp
        data = resp["data"]
        assert data["outcome"] == "opened"
        assert data["relay"] == 1
        assert data["by"] == "2"
        assert data["call_id"] == call_id
        assert data["call_ended"] is True
        cmd = st.commands[0]
        expires_at = cmd.pop("expires_at")
        assert cmd == {"origin": "server", "command": "unlock", "relay": 1, "by": "2", "call_id": call_id,
                       "command_id": data["command_id"]}
        assert abs(expires_at - (time.time() + 5) * 1000) < 5000  # doors.ack_timeout_s (5 s) after sending
        hangup = await st.wait(lambda b: b.get("call_info", {}).get("action") == "hangup")
        assert hangup["call_info"]["reason"] == "door_opened"
        assert hangup["resident_id"] == "2"
        for inbox in (r2, r3):
            _, body = await inbox.wait_for(ctl("cancelled"))
            assert body["call_info"]["reason"] == "door_opened"
            assert body["resident_id"] == "2"
    status, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}")
    assert resp["data"]["status"] == "ended"
    assert resp["data"]["end_reason"] == "door_opened"
    status, resp = await harness.get("/api/doors/events?device_id=1")
    assert status == 200
    assert len(resp["data"]) == 1
    event = resp["data"][0]
    assert event["by"] == "2"
    assert event["outcome"] == "opened"
    assert event["relay"] == 1
    assert event["call_id"] == call_id
    assert event["household_number"] == "101"
    assert event["command_id"] == data["command_id"]
    assert event["at"].endswith("Z")
    status, resp = await harness.get("/api/calls?device_id=1")
    assert resp["data"][0]["door_opened_by"] == "2"
    assert resp["data"][0]["end_reason"] == "door_opened"


async def test_unlock_over_mqtt_with_tokens_keeps_the_call_when_configured(make_harness):
    """Resident 2 publishes an unlock on `users/2/commands` (relay 2, its request_id echoed); with
    `doors.unlock_ends_call: false` the connected call goes on."""
    h, t = await secure_harness(make_harness, doors={"unlock_ends_call": False})
    async with station(h, token=t["device-1"], admin=ADMIN) as st, h.mqtt(**login(t, "resident-2")) as r2:
        await r2.subscribe("users/2/#", qos=1)
        inbox = Inbox(r2)
        call_id = (await h.post("/api/mqtt/call", {"device_id": "1"}, t["device-1"]))[1]["data"]["call_id"]
        status, _ = await h.post("/api/mqtt/controller/resident",
                                 {"call_info": {"call_id": call_id, "action": "answered"}}, t["resident-2"])
        assert status == 200
        await r2.publish("users/2/commands", json.dumps(
            {"command": "unlock", "device_id": "1", "relay": 2, "request_id": "r1"}), qos=1)
        _, body = await inbox.wait_for(lambda tp, b: tp.endswith("/control") and b.get("request_id") == "r1")
        assert body["call_info"]["action"] == "door_opened"
        assert body["call_info"]["call_id"] == call_id
        assert body["door"]["device_id"] == "1"
        assert body["door"]["relay"] == 2
        assert "error" not in body
        assert st.commands[0]["relay"] == 2
        assert st.commands[0]["by"] == "2"
        await inbox.close()
    status, resp = await h.get(f"/api/mqtt/session?call_id={call_id}", ADMIN)
    assert resp["data"]["status"] == "connected"


async def test_other_households_and_devices_are_refused(make_harness):
    """Resident 4 (household 102) gets 403 over REST and MQTT; a device token may not unlock; nothing is sent."""
    h, t = await secure_harness(make_harness)
    async with station(h, token=t["device-1"], admin=ADMIN) as st, h.mqtt(**login(t, "resident-4")) as r4:
        await r4.subscribe("users/4/#", qos=1)
        inbox = Inbox(r4)
        call_id = (await h.post("/api/mqtt/call", {"device_id": "1"}, t["device-1"]))[1]["data"]["call_id"]
        status, resp = await h.post("/api/doors/unlock", {"device_id": "1", "call_id": call_id}, t["resident-4"])
        assert status == 403
        assert resp["message"].startswith("禁止访问: ")
        status, resp = await h.post("/api/doors/unlock", {"device_id": "1"}, t["device-1"])
        assert status == 403
        status, resp = await h.post("/api/doors/unlock", {"device_id": "1", "resident_id": "2"}, t["resident-4"])
        assert status == 403  # a resident token cannot speak for another resident
        await r4.publish("users/4/commands", json.dumps(
            {"command": "unlock", "device_id": "1", "call_id": call_id, "request_id": "x"}), qos=1)
        _, err = await inbox.wait_for(lambda tp, b: tp.endswith("/control") and "error" in b)
        assert tp_is(err, 403)
        assert err["request_id"] == "x"
        assert err["call_info"]["call_id"] == call_id
        # the ACL keeps resident 4 off resident 2's command topic altogether
        await r4.publish("users/2/commands", json.dumps({"command": "unlock", "device_id": "1"}), qos=1)
        await quiet(0.3)  # no command reaches the station
        assert st.commands == []
        await inbox.close()
    status, resp = await h.get("/api/doors/events", ADMIN)
    assert resp["data"] == []


def tp_is(err, code):
    return err["error"]["code"] == code and err["error"]["message"].split(": ", 1)[1] != ""


async def test_without_a_call_unlock_needs_the_setting(make_harness):
    """No live call from the device: 403 `no_call`, unless `doors.allow_unlock_without_call` is true."""
    h = await make_harness()
    async with station(h):
        status, resp = await h.post("/api/doors/unlock", {"device_id": "1", "resident_id": "2"})
        assert status == 403
        assert resp["data"] == {"reason": "no_call"}
    h2 = await make_harness(doors={"allow_unlock_without_call": True}, server={"data_dir": str(
        h.server.settings.server.data_dir / "second")})
    async with station(h2):
        status, resp = await h2.post("/api/doors/unlock", {"device_id": "1", "resident_id": "2"})
        assert status == 200
        assert resp["data"]["call_id"] is None
        assert resp["data"]["call_ended"] is False
        status, resp = await h2.post("/api/doors/unlock", {"device_id": "1", "resident_id": "4"})
        assert status == 403  # still only the device's own household


async def test_offline_device_is_503_at_once_and_recorded(harness):
    """A station that is not connected: 503 `device_offline` without waiting for the ack timeout."""
    call_id = (await harness.start_call())["call_id"]
    t0 = time.monotonic()
    status, resp = await harness.post("/api/doors/unlock", {"device_id": "1", "call_id": call_id, "resident_id": "2"})
    assert status == 503
    assert resp["data"] == {"reason": "device_offline"}
    assert resp["message"].startswith("服务暂不可用: ")
    assert time.monotonic() - t0 < 1.0
    status, resp = await harness.get("/api/doors/events")
    assert resp["data"][0]["outcome"] == "offline"


async def test_silent_station_is_504_and_a_late_ack_is_refused(make_harness):
    """No ack within `doors.ack_timeout_s`: 504 `ack_timeout`, recorded; the ack that comes later gets 409."""
    h = await make_harness(doors={"ack_timeout_s": 0.3})
    async with station(h, ack=None) as st:
        call_id = (await h.start_call())["call_id"]
        status, resp = await h.post("/api/doors/unlock", {"device_id": "1", "call_id": call_id, "resident_id": "2"})
        assert status == 504
        assert resp["data"] == {"reason": "ack_timeout"}
        assert "0.3 s" in resp["message"]
        await st.client.publish("devices/1/commands/ack", json.dumps(
            {"command_id": st.commands[0]["command_id"], "ok": True}), qos=1)
        err = await st.wait(lambda b: "error" in b)
        assert err["error"]["code"] == 409
        assert err["error"]["reason"] == "command_expired"
        status, resp = await h.get(f"/api/mqtt/session?call_id={call_id}")
        assert resp["data"]["status"] == "ringing"
    status, resp = await h.get("/api/doors/events")
    assert resp["data"][0]["outcome"] == "timeout"


async def test_station_reporting_failure_is_502(harness):
    """An ack with `ok: false` is 502 `device_error` carrying the station's error; the call goes on."""
    async with station(harness, ack="fail"):
        call_id = (await harness.start_call())["call_id"]
        status, resp = await harness.post("/api/doors/unlock", {"device_id": "1", "resident_id": "2"})
        assert status == 502
        assert resp["data"] == {"reason": "device_error"}
        assert "relay jammed" in resp["message"]
        status, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}")
        assert resp["data"]["status"] == "ringing"
    status, resp = await harness.get("/api/doors/events?device_id=1&limit=1")
    assert resp["data"][0]["outcome"] == "failed"
    assert resp["data"][0]["error"] == "relay jammed"


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"device_id": "1", "resident_id": "2", "relay": 0}, 400, "relay"),
    ({"device_id": "1", "resident_id": "2", "relay": 5}, 400, "relay"),
    ({"device_id": "1", "resident_id": "2", "relay": "x"}, 400, "relay"),
    ({"device_id": "1", "resident_id": "2", "relay": True}, 400, "relay"),
    ({"resident_id": "2"}, 400, "device_id"),
    ({"device_id": "a/b", "resident_id": "2"}, 400, "device_id"),
    ({"device_id": "nope", "resident_id": "2"}, 404, "nope"),
    ({"device_id": "1", "resident_id": "2", "call_id": "call-x"}, 404, "call-x"),
    ({"device_id": "5", "resident_id": "4", "call_id": "CALL"}, 403, "not from device 5"),
    ({"device_id": "1"}, 400, "resident_id"),
])
async def test_bad_unlock_requests(harness, body, status, needle):
    """Bad relays, ids, unknown devices or calls, another device's call, an anonymous caller without a name."""
    async with station(harness):
        call_id = (await harness.start_call())["call_id"]
        body = {k: (call_id if v == "CALL" else v) for k, v in body.items()}
        got, resp = await harness.post("/api/doors/unlock", body)
        assert got == status, resp
        assert needle in resp["message"], resp
        got, _ = await harness.post("/api/doors/unlock", None, raw=b"{not json")
        assert got == 400


async def test_bad_mqtt_commands_and_acks_get_errors_and_break_nothing(harness, party):
    """An unknown command, a bad relay, a malformed ack and an ack for a command never sent each get an
    error on the sender's control topic; the station keeps working."""
    r2 = await party("resident", "2")
    async with station(harness) as st:
        await r2.client.publish("users/2/commands", json.dumps({"command": "explode", "device_id": "1",
                                                                 "request_id": "a"}), qos=1)
        _, err = await r2.wait_for(lambda t, b: t.endswith("/control") and b.get("request_id") == "a")
        assert err["error"]["code"] == 400
        assert "command" in err["error"]["message"]
        await r2.client.publish("users/2/commands", b"[1,2", qos=1)
        _, err = await r2.wait_for(lambda t, b: t.endswith("/control") and "error" in b and "request_id" not in b)
        assert err["error"]["code"] == 400
        await r2.client.publish("users/2/commands", json.dumps({"command": "unlock", "device_id": "1",
                                                                 "relay": -1, "request_id": "b"}), qos=1)
        _, err = await r2.wait_for(lambda t, b: t.endswith("/control") and b.get("request_id") == "b")
        assert err["error"]["code"] == 400
        assert "relay" in err["error"]["message"]
        await st.client.publish("devices/1/commands/ack", json.dumps({"ok": "yes"}), qos=1)
        err = await st.wait(lambda b: "error" in b)
        assert err["error"]["code"] == 400
        await st.client.publish("devices/1/commands/ack", json.dumps({"command_id": "cmd-nope", "ok": True}), qos=1)
        err = await st.wait(lambda b: "error" in b and b["error"]["code"] == 404)
        assert "cmd-nope" in err["error"]["message"]
        call_id = (await harness.start_call())["call_id"]
        status, _resp = await harness.post("/api/doors/unlock", {"device_id": "1", "call_id": call_id,
                                                                "resident_id": "2"})
        assert status == 200
        assert st.commands


async def test_events_are_scoped_by_role(make_harness):
    """A resident lists its own household's door events only; a device its own; bad queries are 400."""
    h, t = await secure_harness(make_harness, doors={"allow_unlock_without_call": True})
    async with station(h, token=t["device-1"], admin=ADMIN), station(h, "5", token=t["device-5"], admin=ADMIN):
        assert (await h.post("/api/doors/unlock", {"device_id": "1"}, t["resident-2"]))[0] == 200
        assert (await h.post("/api/doors/unlock", {"device_id": "5"}, t["resident-4"]))[0] == 200
    status, resp = await h.get("/api/doors/events", t["resident-4"])
    assert status == 200
    assert [e["device_id"] for e in resp["data"]] == ["5"]
    assert (await h.get("/api/doors/events?household_number=101", t["resident-4"]))[0] == 403
    status, resp = await h.get("/api/doors/events", t["device-1"])
    assert [e["device_id"] for e in resp["data"]] == ["1"]
    assert (await h.get("/api/doors/events?device_id=5", t["device-1"]))[0] == 403
    status, resp = await h.get("/api/doors/events?household_number=101", ADMIN)
    assert [e["by"] for e in resp["data"]] == ["2"]
    assert (await h.get("/api/doors/events?limit=abc", ADMIN))[0] == 400
    assert (await h.get("/api/doors/events?limit=0", ADMIN))[0] == 400
    assert (await h.get("/api/doors/events", None))[0] == 401
