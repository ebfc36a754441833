"""Unit door stations call their own household only; lobby panels any household of the site, or their list."""

from __future__ import annotations

import json

from tests.support.doors import station
from tests.support.harness import ADMIN

SITE = {"households": [
    {"household_number": "101", "residents": [{"resident_id": "2"}, {"resident_id": "3"}],
     "devices": [{"device_id": "1"}]},
    {"household_number": "102", "residents": [{"resident_id": "4"}], "devices": [{"device_id": "5"}]},
    {"household_number": "103", "residents": [{"resident_id": "6"}]},
    {"household_number": "gate", "devices": [
        {"device_id": "L1", "kind": "lobby"},
        {"device_id": "L2", "kind": "lobby", "households": ["101", "103"]}]},
]}


async def test_door_station_calls_only_its_own_household(make_harness, tmp_path):
    """Door station 1 (household 101) ringing household 102 is 403 over REST and MQTT; its own household rings."""
    from tests.support.inbox import parties

    site = {"households": [{**SITE["households"][0], "devices": [{"device_id": "1", "kind": "door"}]},
                           SITE["households"][1]]}
    harness = await make_harness(site=site)
    async with parties(harness) as party:
        await _door_station_calls_only_its_own_household(harness, party)


async def test_device_whose_kind_is_not_set_calls_any_household(harness):
    """A device whose kind is not set follows the seed: `household_number` and `target_resident_id` pick any
    household; without a call it still opens for its own household only."""
    status, resp = await harness.post("/api/mqtt/call", {"device_id": "1", "household_number": "102"})
    assert status == 200, resp
    assert resp["data"]["target_resident_ids"] == ["4"], resp
    await harness.post("/api/mqtt/end-session", {"call_id": resp["data"]["call_id"]})
    status, resp = await harness.post("/api/rtc/call", {"device_id": "1", "resident_id": "4"})
    assert status == 200, resp
    assert (await harness.get("/api/admin/devices/1", ADMIN))[1]["data"]["kind"] is None


async def _door_station_calls_only_its_own_household(harness, party):
    status, resp = await harness.post("/api/mqtt/call", {"device_id": "1", "household_number": "102"})
    assert status == 403
    assert resp["data"] == {"reason": "out_of_scope"}
    assert "102" in resp["message"]
    status, _ = await harness.post("/api/rtc/call", {"device_id": "1", "resident_id": "4"})
    assert status == 403
    dev = await party("device", "1")
    await dev.client.publish("calls/request/1", json.dumps({"household_number": "102", "request_id": "q"}), qos=1)
    _, err = await dev.wait_for(lambda t, b: "error" in b)
    assert err["error"]["code"] == 403
    assert err["error"]["reason"] == "out_of_scope"
    assert err["request_id"] == "q"
    assert (await harness.post("/api/mqtt/call", {"device_id": "1", "household_number": "101"}))[0] == 200
    assert harness.svc.store.list_calls({"household_number": "102"}, 10) == []


async def test_lobby_panels_from_site_config(make_harness):
    """`site:` declares lobby L1 (any household) and L2 (101 and 103 only); the admin API shows the kinds."""
    h = await make_harness(site=SITE)
    assert (await h.post("/api/mqtt/call", {"device_id": "L1", "household_number": "102"}))[0] == 200
    assert (await h.post("/api/mqtt/call", {"device_id": "L2", "household_number": "103"}))[0] == 200
    status, resp = await h.post("/api/mqtt/call", {"device_id": "L2", "household_number": "102"})
    assert status == 403
    assert resp["data"] == {"reason": "out_of_scope"}
    status, resp = await h.get("/api/admin/devices/L2", ADMIN)
    assert resp["data"]["kind"] == "lobby"
    assert resp["data"]["households"] == ["101", "103"]
    status, resp = await h.get("/api/admin/devices/1", ADMIN)
    assert resp["data"]["kind"] is None
    assert resp["data"]["households"] is None


async def test_admin_api_sets_kind_and_scope(harness):
    """POST creates a lobby, PATCH makes 1 a door, then a lobby; bad values are 400/404; non-admins 403."""
    status, resp = await harness.post("/api/admin/devices", {"device_id": "9", "household_number": "101",
                                                             "kind": "lobby", "households": ["102"]}, ADMIN)
    assert status == 200
    assert resp["data"]["kind"] == "lobby"
    assert resp["data"]["households"] == ["102"]
    call_id = (await harness.start_call("9", household_number="102"))["call_id"]
    assert (await harness.post("/api/mqtt/call", {"device_id": "9", "household_number": "101"}))[0] == 403
    assert (await harness.post("/api/mqtt/end-session", {"call_id": call_id}, ADMIN))[0] == 200
    assert (await harness.patch("/api/admin/devices/1", {"kind": "door"}, ADMIN))[1]["data"]["kind"] == "door"
    assert (await harness.post("/api/mqtt/call", {"device_id": "1", "household_number": "102"}))[0] == 403
    status, resp = await harness.patch("/api/admin/devices/1", {"kind": "lobby"}, ADMIN)
    assert status == 200
    assert resp["data"]["kind"] == "lobby"
    assert resp["data"]["households"] is None
    assert (await harness.post("/api/mqtt/call", {"device_id": "1", "household_number": "102"}))[0] == 200
    assert (await harness.patch("/api/admin/devices/1", {"kind": "door"}, ADMIN))[1]["data"]["kind"] == "door"
    bad = (({"kind": "elevator"}, 400), ({"households": "102"}, 400), ({"kind": "lobby", "households": ["nope"]}, 404),
           ({"households": ["a/b"]}, 400), ({"kind": "door", "households": ["102"]}, 400))
    for body, code in bad:
        status, resp = await harness.patch("/api/admin/devices/1", body, ADMIN)
        assert status == code, (body, resp)
    assert (await harness.patch("/api/admin/devices/nope", {"kind": "lobby"}, ADMIN))[0] == 404
    status, resp = await harness.post("/api/admin/devices", {"device_id": "10", "household_number": "101",
                                                             "kind": "gate"}, ADMIN)
    assert status == 400
    assert "kind" in resp["message"]
    h2_token = (await harness.post("/api/admin/residents/2/token", None, ADMIN))[1]["data"]["token"]
    assert (await harness.patch("/api/admin/devices/1", {"kind": "lobby"}, h2_token))[0] == 403


async def test_lobby_unlock_follows_the_called_household(make_harness):
    """Lobby L1 rings household 102: resident 4 may open it, resident 2 (household 101) may not."""
    h = await make_harness(site=SITE)
    async with station(h, "L1") as st:
        call_id = (await h.start_call("L1", household_number="102"))["call_id"]
        status, resp = await h.post("/api/doors/unlock", {"device_id": "L1", "call_id": call_id, "resident_id": "2"})
        assert status == 403, resp
        status, resp = await h.post("/api/doors/unlock", {"device_id": "L1", "call_id": call_id, "resident_id": "4"})
        assert status == 200
        assert st.commands[0]["by"] == "4"
    status, resp = await h.get("/api/doors/events?household_number=102")
    assert resp["data"][0]["device_id"] == "L1"
    assert resp["data"][0]["by"] == "4"


def test_a_database_made_before_kinds_opens_with_no_device_kind_set(tmp_path):
    """An older intercom.db (no `kind`, `households`, snapshot or door columns) is extended on open."""
    import sqlite3

    from broker.core.directory import Directory
    from broker.core.store import Store

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE devices (device_id TEXT PRIMARY KEY, household_number TEXT, name TEXT, "
               "token_hash TEXT, created_at FLOAT)")
    db.execute("CREATE TABLE households (household_number TEXT PRIMARY KEY, name TEXT, created_at FLOAT)")
    db.execute("INSERT INTO households VALUES ('101', NULL, 0)")
    db.execute("INSERT INTO devices VALUES ('1', '101', NULL, NULL, 0)")
    db.commit()
    db.close()
    store = Store(path)
    directory = Directory(store, 1000, None)
    assert directory.device("1")["kind"] is None
    assert directory.device("1")["households"] is None
    assert {"snapshot_at", "door_opened_by", "door_opened_at"} <= set(store.db["calls"].columns_dict)
    directory.set_device_kind("1", "lobby", ["101"])
    assert Directory(store, 1000, None).device("1")["households"] == ["101"]
    store.close()
