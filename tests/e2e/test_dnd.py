"""Do-not-disturb, end to end: real broker, MQTT clients, HTTP, sqlite."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from broker.core.dnd import in_windows
from tests.support.harness import ADMIN
from tests.support.inbox import is_ctl
from tests.support.waits import quiet


def test_windows_wrap_past_midnight():
    """22:00-07:00 holds at 23:30 and 06:59, not at 07:00 or 12:00; 09:00-17:00 holds at 09:00, not 17:00."""
    night = [("22:00", "07:00")]
    assert in_windows(night, 23 * 60 + 30)
    assert in_windows(night, 6 * 60 + 59)
    assert not in_windows(night, 7 * 60)
    assert not in_windows(night, 12 * 60)
    day = [("09:00", "17:00")]
    assert in_windows(day, 9 * 60)
    assert not in_windows(day, 17 * 60)


async def test_resident_in_dnd_is_not_rung(harness, party):
    """Resident 2 in DND gets no incoming; resident 3 rings; the session lists 2 as skipped."""
    r2, r3 = await party("resident", "2"), await party("resident", "3")
    status, resp = await harness.put("/api/residents/2/dnd", {"enabled": True})
    assert status == 200
    assert resp["data"]["enabled"] is True
    assert resp["data"]["active"] is True
    assert (await harness.get("/api/residents/2/dnd"))[1]["data"]["active"] is True
    data = await harness.start_call("1")
    assert data["target_resident_ids"] == ["2", "3"]
    assert data["dnd_resident_ids"] == ["2"]
    await r3.wait_for(lambda t, b: t.endswith("/incoming") and b["call_id"] == data["call_id"])
    await quiet(0.2)  # no invite reaches resident 2
    assert not [b for t, b, _ in r2.messages if t.endswith("/incoming")]
    _, resp = await harness.get(f"/api/mqtt/session?call_id={data['call_id']}")
    assert resp["data"]["dnd_resident_ids"] == ["2"]
    assert resp["data"]["ringing_resident_ids"] == ["3"]
    # resident 2 was not rung: it cannot answer
    status, resp = await harness.post("/api/mqtt/controller/resident", {
        "resident_id": "2", "call_info": {"call_id": data["call_id"], "action": "answered"}})
    assert status == 409


async def test_whole_household_in_dnd_ends_the_call_at_once(harness, party):
    """Household DND: REST caller 409 `dnd`, the device hears `rejected`/`dnd`, the call is stored ended `dnd`."""
    dev, r2 = await party("device", "1"), await party("resident", "2")
    status, _ = await harness.put("/api/households/101/dnd", {"enabled": True})
    assert status == 200
    status, resp = await harness.post("/api/mqtt/call", {"device_id": "1"})
    assert status == 409
    assert resp["data"] == {"reason": "dnd"}
    assert resp["message"].startswith("状态冲突: ")
    _, body = await dev.wait_for(is_ctl("rejected", "dnd"))
    call_id = body["call_info"]["call_id"]
    _, resp = await harness.get(f"/api/mqtt/session?call_id={call_id}")
    assert resp["data"]["status"] == "ended"
    assert resp["data"]["end_reason"] == "dnd"
    assert resp["data"]["dnd_resident_ids"] == ["2", "3"]
    assert not [b for t, b, _ in r2.messages if t.endswith("/incoming")]
    # the device is free again at once, and over MQTT the request gets a 409 `dnd` error reply
    await dev.client.publish("calls/request/1", json.dumps({"request_id": "rq-dnd"}), qos=1)
    _, reply = await dev.wait_for(lambda t, b: b.get("request_id") == "rq-dnd")
    assert reply["error"]["code"] == 409
    assert reply["error"]["reason"] == "dnd"
    # switching it off rings again
    assert (await harness.put("/api/households/101/dnd", {"enabled": False}))[0] == 200
    assert (await harness.start_call("1"))["target_resident_ids"] == ["2", "3"]


async def test_emergency_device_bypasses_dnd(harness, party):
    """A device created with `emergency: true` rings residents in DND."""
    r2 = await party("resident", "2")
    status, _ = await harness.post("/api/admin/devices", {"device_id": "fire", "household_number": "101",
                                                          "emergency": True}, token=ADMIN)
    assert status == 200
    assert (await harness.put("/api/households/101/dnd", {"enabled": True}))[0] == 200
    data = await harness.start_call("fire")
    assert "dnd_resident_ids" not in data
    await r2.wait_for(lambda t, b: t.endswith("/incoming") and b["device_id"] == "fire")


async def test_schedule_in_the_site_time_zone(make_harness):
    """A window around now (site.timezone) puts the resident in DND; a window 3 hours away does not."""
    h = await make_harness(site={"timezone": "Asia/Shanghai"})
    local = datetime.now(tz=ZoneInfo("Asia/Shanghai"))
    around = {"from": (local - timedelta(hours=1)).strftime("%H:%M"),
              "to": (local + timedelta(hours=1)).strftime("%H:%M")}
    away = {"from": (local + timedelta(hours=3)).strftime("%H:%M"),
            "to": (local + timedelta(hours=4)).strftime("%H:%M")}
    status, resp = await h.put("/api/residents/2/dnd", {"enabled": True, "schedule": [around]})
    assert status == 200
    assert resp["data"]["active"] is True
    assert resp["data"]["timezone"] == "Asia/Shanghai"
    assert resp["data"]["schedule"] == [around]
    data = await h.start_call("1")
    assert data["dnd_resident_ids"] == ["2"]
    await h.post("/api/mqtt/controller/device", {"call_info": {"call_id": data["call_id"], "action": "cancelled"}})
    status, resp = await h.put("/api/residents/2/dnd", {"enabled": True, "schedule": [away]})
    assert status == 200
    assert resp["data"]["active"] is False
    assert "dnd_resident_ids" not in await h.start_call("1")


async def test_dnd_survives_a_restart(make_harness, settings_factory):
    """A stored DND setting is in force after the server restarts on the same data dir."""
    settings = settings_factory()
    h = await make_harness(settings)
    assert (await h.put("/api/residents/3/dnd", {"enabled": True}))[0] == 200
    await h.server.stop()
    h2 = await make_harness(settings)
    assert (await h2.start_call("1"))["dnd_resident_ids"] == ["3"]


async def test_dnd_permissions(harness):
    """A resident sets its own DND and its household's; not another resident's or household's; devices never."""
    t2, t4, d1 = await harness.token("residents", "2"), await harness.token("residents", "4"), \
        await harness.token("devices", "1")
    assert (await harness.put("/api/residents/2/dnd", {"enabled": True}, token=t2))[0] == 200
    assert (await harness.get("/api/residents/2/dnd", token=t2))[0] == 200
    assert (await harness.put("/api/households/101/dnd", {"enabled": True}, token=t2))[0] == 200
    for path, tok in (("/api/residents/2/dnd", t4), ("/api/households/101/dnd", t4), ("/api/residents/2/dnd", d1),
                      ("/api/households/101/dnd", d1)):
        status, resp = await harness.put(path, {"enabled": False}, token=tok)
        assert status == 403, (path, resp)
        assert resp["message"].startswith("禁止访问: "), (path, resp)
        assert (await harness.get(path, token=tok))[0] == 403
    assert (await harness.put("/api/residents/2/dnd", {"enabled": False}, token=ADMIN))[0] == 200
    assert (await harness.get("/api/residents/2/dnd", token=ADMIN))[1]["data"]["enabled"] is False


@pytest.mark.parametrize(("path", "body", "detail"), [
    ("/api/residents/2/dnd", {}, "enabled: field required"),
    ("/api/residents/2/dnd", {"enabled": "yes"}, "enabled: "),
    ("/api/residents/2/dnd", {"enabled": True, "schedule": [{"from": "25:00", "to": "07:00"}]}, "schedule.0.from: "),
    ("/api/residents/2/dnd", {"enabled": True, "schedule": [{"from": "7:00", "to": "08:00"}]}, "schedule.0.from: "),
    ("/api/residents/2/dnd", {"enabled": True, "schedule": [{"from": "07:00", "to": "07:00"}]}, "schedule.0: "),
    ("/api/residents/2/dnd", {"enabled": True, "schedule": [{"from": "07:00"}]}, "schedule.0.to: field required"),
    ("/api/residents/2/dnd", {"enabled": True, "schedule": "22:00-07:00"}, "schedule: "),
    ("/api/households/101/dnd", [], "body: must be a JSON object"),
    ("/api/residents/" + "x" * 65 + "/dnd", {"enabled": True}, "resident_id: "),
])
async def test_dnd_bad_inputs(harness, path, body, detail):
    """Bad bodies and ids are 400 naming the field."""
    status, resp = await harness.put(path, body)
    assert status == 400, resp
    assert resp["message"].startswith("无效的请求参数: " + detail), resp


async def test_dnd_unknown_and_wrong_method(harness):
    """Unknown resident or household: 404; POST on the DND path: 405 with Allow."""
    assert (await harness.put("/api/residents/nobody/dnd", {"enabled": True}))[0] == 404
    assert (await harness.put("/api/households/999/dnd", {"enabled": True}))[0] == 404
    status, resp = await harness.post("/api/residents/2/dnd", {"enabled": True})
    assert status == 405
    assert "PUT" in resp["message"]


async def test_a_resident_sets_its_dnd_over_mqtt(harness, party):
    """`{"command":"dnd"}` on users/{id}/commands sets the resident's DND (as PUT does) and answers on its control
    topic with the setting and the request_id; a bad body gets a 400 error there and changes nothing."""
    r2 = await party("resident", "2")
    await r2.client.publish("users/2/commands", json.dumps(
        {"command": "dnd", "enabled": True, "schedule": [{"from": "22:00", "to": "07:00"}], "request_id": "d1"}), qos=1)
    _, body = await r2.wait_for(lambda t, b: t == "users/2/calls/control" and b.get("request_id") == "d1")
    assert body["call_info"]["action"] == "dnd"
    assert body["dnd"]["enabled"] is True
    assert body["dnd"]["schedule"] == [{"from": "22:00", "to": "07:00"}]
    _, resp = await harness.get("/api/residents/2/dnd")
    assert resp["data"]["enabled"] is True
    assert resp["data"]["schedule"] == [{"from": "22:00", "to": "07:00"}]
    await r2.client.publish("users/2/commands", json.dumps(
        {"command": "dnd", "enabled": "maybe", "request_id": "d2"}), qos=1)
    _, body = await r2.wait_for(lambda t, b: t == "users/2/calls/control" and b.get("request_id") == "d2")
    assert body["error"]["code"] == 400
    assert "enabled" in body["error"]["message"]
    assert (await harness.get("/api/residents/2/dnd"))[1]["data"]["enabled"] is True
