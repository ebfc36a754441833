"""The web console's server side: static files, its config endpoint, editing the directory, the admin MQTT login."""

from __future__ import annotations

import asyncio
import json
import logging

import aiomqtt

from tests.support.doors import JPEG
from tests.support.harness import ADMIN
from tests.support.inbox import Inbox
from tests.support.security import secure_harness

AUTHENTICATED = {"auth": {"allow_anonymous_on_loopback": False}}


async def test_console_page_is_public_and_locked_to_its_own_origin(make_harness):
    """In authenticated mode `/` still loads without a token, with a CSP allowing only the box itself."""
    h = await make_harness(**AUTHENTICATED)
    async with h.http.get(h.base + "/") as r:
        html = await r.text()
        assert r.status == 200
        assert r.content_type == "text/html"
        csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert f"ws://127.0.0.1:{h.server.ws_port}" in csp
    assert '<script type="module" src="console/app.js">' in html  # relative: also under /sites/{id}/
    assert (await h.get("/api/admin/households"))[0] == 401  # the API behind it is not public


async def test_static_files_are_served_from_the_package_only(harness):
    """Known files come with their type; unknown names and path tricks get the 404 envelope."""
    async with harness.http.get(harness.base + "/console/app.js") as r:
        assert r.status == 200
        assert r.content_type == "text/javascript"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    async with harness.http.get(harness.base + "/console/vendor/mqtt.esm.js") as r:
        assert r.status == 200
        assert len(await r.read()) > 100_000
    for path in ("/console/nope.js", "/console/..%2f..%2fbroker.yaml", "/console/%2e%2e/console_views.py"):
        status, body = await harness.get(path)
        assert status == 404, path
        assert body["code"] == 404, path


async def test_console_config_names_the_websocket_listener_and_mode(make_harness):
    """The page learns the real (ephemeral) WS port, the mode and which optional features exist."""
    local = await make_harness()
    status, body = await local.get("/api/console/config")
    assert status == 200
    cfg = body["data"]
    assert cfg["mode"] == "local-only"
    assert cfg["mqtt"]["ws_port"] == local.server.ws_port
    assert cfg["mqtt"]["ws_path"] == "/mqtt"
    assert cfg["mqtt"]["ws_scheme"] == "ws"
    assert cfg["calls"]["ring_timeout_s"] == 30.0
    assert cfg["features"] == {"door_unlock": True, "dnd": True, "forwarding": True, "snapshots": True,
                               "device_kind": True, "missed_calls": True}
    authed = await make_harness(**AUTHENTICATED)
    status, body = await authed.get("/api/console/config")
    assert status == 200
    assert body["data"]["mode"] == "authenticated"
    assert body["data"]["mqtt"]["client_id_suffixes"] is True


async def test_admin_renames_and_moves_directory_entries(make_harness):
    """PATCH changes a name (and a member's household); unknown ids are 404, other roles 403."""
    h = await make_harness(**AUTHENTICATED)
    status, body = await h.post("/api/admin/residents", {"resident_id": "9", "household_number": "101"}, ADMIN)
    assert status == 200
    resident_token = body["data"]["token"]
    async with h.http.patch(h.base + "/api/admin/residents/9", json={"name": "Ann", "household_number": "102"},
                            headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        assert r.status == 200, await r.text()
    status, body = await h.get("/api/admin/residents/9", ADMIN)
    assert body["data"]["name"] == "Ann"
    assert body["data"]["household_number"] == "102"
    async with h.http.patch(h.base + "/api/admin/households/101", json={"name": "Flat 101"},
                            headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        assert r.status == 200
        assert (await r.json())["data"]["name"] == "Flat 101"
    async with h.http.patch(h.base + "/api/admin/devices/nope", json={"name": "x"},
                            headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        assert r.status == 404
    async with h.http.patch(h.base + "/api/admin/residents/2", json={"household_number": "999"},
                            headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        assert r.status == 404
        assert "999" in (await r.json())["message"]
    async with h.http.patch(h.base + "/api/admin/residents/9", json={"name": "Me"},
                            headers={"Authorization": f"Bearer {resident_token}"}) as r:
        assert r.status == 403


async def test_admin_token_logs_in_over_websocket_and_plays_parties_logged_as_simulated(make_harness, caplog):
    """The admin MQTT principal reads every site topic over WS; each party it plays is logged once as simulated."""
    h = await make_harness(**AUTHENTICATED)
    caplog.set_level(logging.INFO, logger="intercom.acl")
    async with aiomqtt.Client("127.0.0.1", h.server.ws_port, identifier="admin/console-t1", username="admin",
                              password=ADMIN, transport="websockets", websocket_path="/mqtt") as admin:
        await admin.subscribe("#", qos=1)
        inbox = Inbox(admin)
        for n in (1, 2):  # the second request is refused (device busy) but the party is not logged again
            await admin.publish("calls/request/1", json.dumps({"request_id": f"r{n}"}), qos=1)
            await inbox.wait_for(lambda t, b, n=n: t == "devices/1/calls/control" and b.get("request_id") == f"r{n}")
        _, incoming = await inbox.wait_for(lambda t, b: t == "users/3/calls/incoming")
        await admin.publish("users/3/calls/control",
                            json.dumps({"call_info": {"call_id": incoming["call_id"], "action": "answered"}}), qos=1)
        await inbox.wait_for(lambda t, b: t == "devices/1/calls/control" and b["call_info"].get("action") == "answered")
    simulated = [r.getMessage() for r in caplog.records if "simulated" in r.getMessage()]
    assert len(simulated) == 2, simulated
    assert "device 1" in simulated[0]
    assert "resident 3" in simulated[1]
    assert "admin/console-t1" in simulated[0]


async def test_other_principals_playing_themselves_are_not_logged_as_simulated(make_harness, caplog):
    """A device publishing on its own topics is the real party: no simulated line."""
    h, t = await secure_harness(make_harness)
    caplog.set_level(logging.INFO, logger="intercom.acl")
    async with h.mqtt("device-1", "1", t["device-1"]) as dev:
        await dev.publish("calls/request/1", json.dumps({"request_id": "x"}), qos=1)
        await h.until(lambda: h.svc.calls.active_count == 1, what="the call started")
    assert h.svc.calls.active_count == 1
    assert not [r for r in caplog.records if "simulated" in r.getMessage()]


async def test_admin_patch_sets_a_devices_emergency_flag(make_harness):
    """PATCH `emergency` on an existing device (token kept) lets it ring through DND; other kinds get 400."""
    h = await make_harness(**AUTHENTICATED)
    assert (await h.put("/api/households/101/dnd", {"enabled": True}, ADMIN))[0] == 200
    assert (await h.post("/api/mqtt/call", {"device_id": "1"}, ADMIN))[0] == 409  # every target in DND
    status, body = await h.patch("/api/admin/devices/1", {"emergency": True, "name": "Gate"}, ADMIN)
    assert status == 200
    assert body["data"]["emergency"] is True
    assert body["data"]["name"] == "Gate"
    assert (await h.get("/api/admin/devices/1", ADMIN))[1]["data"]["emergency"] is True
    status, body = await h.post("/api/mqtt/call", {"device_id": "1"}, ADMIN)
    assert status == 200
    assert body["data"]["target_resident_ids"] == ["2", "3"]
    h.svc.directory.seed_site(h.svc.settings.site)  # as at the next start: broker.yaml does not name the flag
    assert (await h.get("/api/admin/devices/1", ADMIN))[1]["data"]["emergency"] is True
    status, body = await h.patch("/api/admin/residents/2", {"emergency": True}, ADMIN)
    assert status == 400
    assert "emergency" in body["message"]
    assert (await h.patch("/api/admin/devices/1", {"emergency": "yes"}, ADMIN))[0] == 400


async def test_admin_lists_carry_dnd_and_forwarding_settings(make_harness):
    """The Site page reads every resident's and household's DND and forwarding from the two lists, not per row."""
    h = await make_harness(**AUTHENTICATED)
    assert (await h.put("/api/residents/3/dnd", {"enabled": True, "schedule": [{"from": "22:00", "to": "07:00"}]},
                      ADMIN))[0] == 200
    assert (await h.put("/api/households/102/forwarding", {"forward_to": ["2"], "forward_after_s": 12},
                      ADMIN))[0] == 200
    residents = {r["resident_id"]: r for r in (await h.get("/api/admin/residents", ADMIN))[1]["data"]}
    assert residents["3"]["dnd"]["schedule"] == [{"from": "22:00", "to": "07:00"}]
    assert residents["2"]["dnd"]["enabled"] is False
    households = {x["household_number"]: x for x in (await h.get("/api/admin/households", ADMIN))[1]["data"]}
    assert households["102"]["forwarding"]["forward_to"] == ["2"]
    assert households["102"]["forwarding"]["forward_after_s"] == 12
    assert households["101"]["forwarding"]["forward_to"] is None
    assert households["101"]["dnd"]["enabled"] is False
    assert (await h.get("/api/admin/residents/3", ADMIN))[1]["data"]["dnd"]["enabled"] is True


async def test_call_history_rows_show_the_ring_phase_dnd_and_forwarding(make_harness):
    """`GET /api/calls` rows carry what Live and History show: ring phase, who rings, DND skips, forwarding."""
    site = {"forward_to": ["4"], "forward_after_s": 0.3}
    h = await make_harness(site=site, calls={"ring_timeout_s": 5})
    assert (await h.put("/api/residents/3/dnd", {"enabled": True}))[0] == 200
    call_id = (await h.start_call("1"))["call_id"]
    row = (await h.get("/api/calls?status=ringing"))[1]["data"][0]
    assert row["call_id"] == call_id
    assert row["ring_phase"] == "first"
    assert row["ringing_resident_ids"] == ["2"]
    assert row["dnd_resident_ids"] == ["3"]
    assert row["forward_to"] == ["4"]
    assert row["forward_after_s"] == 0.3
    assert row["forwarded_at"] is None
    async with asyncio.timeout(5):  # the forward deadline passes on the server's own timer
        while True:
            row = (await h.get("/api/calls?status=ringing"))[1]["data"][0]
            if row["ring_phase"] == "forwarded":
                break
            await asyncio.sleep(0.05)
    assert row["ringing_resident_ids"] == ["4"]
    assert row["forwarded_at"] is not None


async def test_admin_console_login_drives_every_issue_13_feature(make_harness):
    """Over the console's admin WS login and admin REST: kind, DND, forwarding, snapshot, unlock with a played ack."""
    h = await make_harness(**AUTHENTICATED)
    assert (await h.patch("/api/admin/devices/5", {"kind": "lobby", "households": ["101"]}, ADMIN))[0] == 200
    assert (await h.put("/api/households/102/dnd", {"enabled": True}, ADMIN))[0] == 200
    assert (await h.put("/api/households/101/forwarding", {"forward_to": ["4"]}, ADMIN))[0] == 200
    async with aiomqtt.Client("127.0.0.1", h.server.ws_port, identifier="admin/console-t2", username="admin",
                              password=ADMIN, transport="websockets", websocket_path="/mqtt") as admin:
        await admin.subscribe("#", qos=1)
        inbox = Inbox(admin)
        await admin.publish("devices/5/status", json.dumps({"online": True}), qos=1)  # the played station is up
        await admin.publish("calls/request/5", json.dumps({"request_id": "r1", "household_number": "101"}), qos=1)
        _, reply = await inbox.wait_for(lambda t, b: t == "devices/5/calls/control" and b.get("request_id") == "r1")
        call_id = reply["call_id"]
        async with h.http.post(f"{h.base}/api/calls/{call_id}/snapshot", data=JPEG,
                               headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "image/jpeg"}) as r:
            assert r.status == 200, await r.text()
        async with h.http.get(f"{h.base}/api/calls/{call_id}/snapshot",
                              headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 200
            assert await r.read() == JPEG
        await admin.publish("users/2/commands", json.dumps({"command": "unlock", "device_id": "5",
                                                            "call_id": call_id, "request_id": "u1"}), qos=1)
        _, cmd = await inbox.wait_for(lambda t, b: t == "devices/5/commands")
        assert cmd["by"] == "2"
        assert cmd["call_id"] == call_id
        await admin.publish("devices/5/commands/ack", json.dumps({"command_id": cmd["command_id"], "ok": True}), qos=1)
        _, done = await inbox.wait_for(lambda t, b: t == "users/2/calls/control" and b.get("request_id") == "u1")
        assert done["call_info"]["action"] == "door_opened"
        assert done["door"]["call_ended"] is True
        await inbox.close()
    row = (await h.get("/api/calls?device_id=5", ADMIN))[1]["data"][0]
    assert row["end_reason"] == "door_opened"
    assert row["door_opened_by"] == "2"
    assert row["snapshot_url"] == f"/api/calls/{call_id}/snapshot"
