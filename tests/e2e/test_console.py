"""The web console's server side: static files, its config endpoint, editing the directory, the admin MQTT login."""

from __future__ import annotations

import asyncio
import json
import logging

import aiomqtt

from tests.conftest import ADMIN, Inbox
from tests.security_helpers import secure_harness

AUTHENTICATED = {"auth": {"allow_anonymous_on_loopback": False}}


async def test_console_page_is_public_and_locked_to_its_own_origin(make_harness):
    """In authenticated mode `/` still loads without a token, with a CSP allowing only the box itself."""
    h = await make_harness(**AUTHENTICATED)
    async with h.http.get(h.base + "/") as r:
        html = await r.text()
        assert r.status == 200 and r.content_type == "text/html"
        csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and f"ws://127.0.0.1:{h.server.ws_port}" in csp
    assert '<script type="module" src="/console/app.js">' in html
    assert (await h.get("/api/admin/households"))[0] == 401  # the API behind it is not public


async def test_static_files_are_served_from_the_package_only(harness):
    """Known files come with their type; unknown names and path tricks get the 404 envelope."""
    async with harness.http.get(harness.base + "/console/app.js") as r:
        assert r.status == 200 and r.content_type == "text/javascript"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    async with harness.http.get(harness.base + "/console/vendor/mqtt.esm.js") as r:
        assert r.status == 200 and len(await r.read()) > 100_000
    for path in ("/console/nope.js", "/console/..%2f..%2fbroker.yaml", "/console/%2e%2e/console_views.py"):
        status, body = await harness.get(path)
        assert status == 404 and body["code"] == 404, path


async def test_console_config_names_the_websocket_listener_and_mode(make_harness):
    """The page learns the real (ephemeral) WS port, the mode and which optional features exist."""
    local = await make_harness()
    status, body = await local.get("/api/console/config")
    assert status == 200
    cfg = body["data"]
    assert cfg["mode"] == "local-only" and cfg["mqtt"]["ws_port"] == local.server.ws_port
    assert cfg["mqtt"]["ws_path"] == "/mqtt" and cfg["mqtt"]["ws_scheme"] == "ws"
    assert cfg["calls"]["ring_timeout_s"] == 30.0 and cfg["features"]["door_unlock"] is False
    authed = await make_harness(**AUTHENTICATED)
    status, body = await authed.get("/api/console/config")
    assert status == 200 and body["data"]["mode"] == "authenticated"
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
    assert body["data"]["name"] == "Ann" and body["data"]["household_number"] == "102"
    async with h.http.patch(h.base + "/api/admin/households/101", json={"name": "Flat 101"},
                            headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        assert r.status == 200 and (await r.json())["data"]["name"] == "Flat 101"
    async with h.http.patch(h.base + "/api/admin/devices/nope", json={"name": "x"},
                            headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        assert r.status == 404
    async with h.http.patch(h.base + "/api/admin/residents/2", json={"household_number": "999"},
                            headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        assert r.status == 404 and "999" in (await r.json())["message"]
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
    assert "device 1" in simulated[0] and "resident 3" in simulated[1] and "admin/console-t1" in simulated[0]


async def test_other_principals_playing_themselves_are_not_logged_as_simulated(make_harness, caplog):
    """A device publishing on its own topics is the real party: no simulated line."""
    h, t = await secure_harness(make_harness)
    caplog.set_level(logging.INFO, logger="intercom.acl")
    async with h.mqtt("device-1", "1", t["device-1"]) as dev:
        await dev.publish("calls/request/1", json.dumps({"request_id": "x"}), qos=1)
        await asyncio.sleep(0.2)
    assert h.svc.calls.active_count == 1
    assert not [r for r in caplog.records if "simulated" in r.getMessage()]
