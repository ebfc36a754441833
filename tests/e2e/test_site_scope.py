"""The REST API scoped by site (issue 23 item 4): an instance started with `--site-id A` answers under `/sites/A/…`
too, so one reverse proxy routes every site by path; another site's path is a 404 `unknown_site`, never served."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

from broker.bridge import BridgedServer
from tests.e2e.test_console_browser import CHROMIUM, browser, shot, tabs
from tests.mosquitto_helpers import Mosquitto, needs_mosquitto
from tests.support.harness import ADMIN, Harness, make_settings
from tests.support.inbox import Inbox

pytestmark = needs_mosquitto
__all__ = ["browser"]  # the Chromium fixture of the console's browser tests, used here once

if CHROMIUM.exists():
    from playwright.async_api import expect


@pytest.fixture
async def site_a(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Harness]:
    """Site `A` bridged to a Mosquitto, authenticated (admin token ADMIN), with the default one-household site."""
    settings = make_settings(tmp_path, auth={"allow_anonymous_on_loopback": False})
    server = BridgedServer(settings, f"mqtt://127.0.0.1:{mosquitto.port}", site_id="A")
    await server.start()
    h = Harness(server, aiohttp.ClientSession())  # type: ignore[arg-type]
    yield h
    await h.http.close()
    await server.stop()


async def test_the_site_prefix_serves_the_same_api_as_the_plain_paths(site_a):
    h = site_a
    for path in ("/api/admin/devices", "/api/admin/households", "/api/calls"):
        plain = await h.get(path, ADMIN)
        scoped = await h.get(f"/sites/A{path}", ADMIN)
        assert plain[0] == scoped[0] == 200, (path, scoped)
        assert scoped[1]["data"] == plain[1]["data"]
    status, body = await h.get("/sites/A/healthz")
    assert status == 200, body
    assert body["data"]["site_id"] == "A"
    status, body = await h.get("/healthz")
    assert body["data"]["site_id"] == "A"
    # writes and query strings go through the prefix as well
    status, body = await h.post("/sites/A/api/admin/households", {"household_number": "202"}, ADMIN)
    assert status == 200, body
    status, body = await h.get("/api/admin/households?household_number=202", ADMIN)
    assert [r["household_number"] for r in body["data"]] == ["202"]
    status, body = await h.get("/sites/A/api/admin/residents?household_number=101", ADMIN)
    assert status == 200
    assert {r["resident_id"] for r in body["data"]} == {"2", "3"}
    # the prefix changes nothing about authentication
    status, body = await h.get("/sites/A/api/admin/devices")
    assert status == 401, body
    status, body = await h.get("/sites/A/api/admin/devices", "not-a-token")
    assert status == 401


async def test_another_sites_path_is_a_404_unknown_site_and_never_served(site_a):
    h = site_a
    for path in ("/sites/B/api/admin/devices", "/sites/B/healthz", "/sites/a/api/calls", "/sites/B",
                 "/sites/B/", "/sites//api/calls", "/sites"):
        status, body = await h.get(path, ADMIN)
        assert status == 404, (path, body)
        assert body["code"] == 404
        assert body["data"] == {"reason": "unknown_site"}, (path, body)
        assert "devices" not in json.dumps(body["data"])
    status, body = await h.post("/sites/B/api/admin/households", {"household_number": "303"}, ADMIN)
    assert (status, body["data"]) == (404, {"reason": "unknown_site"})
    status, body = await h.get("/api/admin/households/303", ADMIN)
    assert status == 404  # nothing was written by the wrong site's request
    # an unknown path under the right site is the ordinary 404
    for path in ("/sites/A/api/nothing-here", "/sites/A//api/calls", "/sites/A//127.0.0.1/api/calls"):
        status, body = await h.get(path, ADMIN)
        assert status == 404, (path, body)
        assert body["data"] is None
    # encoded characters and queries pass through unchanged
    status, body = await h.get("/sites/A/api/admin/devices/%31", ADMIN)
    assert (status, body["data"]["device_id"]) == (200, "1")
    status, body = await h.get("/sites/A/api/calls?household_number=%31%30%32", ADMIN)
    assert (status, body["data"]) == (200, [])


async def test_the_site_endpoint_says_which_site_and_counts_its_devices_and_calls(site_a, mosquitto):
    h = site_a
    status, body = await h.get("/api/admin/site")
    assert status == 401
    status, body = await h.get("/sites/A/api/admin/site", ADMIN)
    assert status == 200, body
    site = body["data"]
    assert site["site_id"] == "A"
    assert site["mode"] == "bridge"
    assert site["devices"] == {"total": 2, "online": 0}  # devices 1 and 5
    assert site["live_calls"] == 0
    assert site["last_24h"] == {"calls": 0, "missed": 0, "failed": 0}
    # a device reports online and starts a call over the site's mount point
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="door-1") as door:
        await door.subscribe("sites/A/devices/1/#", qos=1)
        inbox = Inbox(door)
        try:
            await door.publish("sites/A/devices/1/status", json.dumps({"online": True}), qos=1)
            await door.publish("sites/A/calls/request/1", json.dumps({"household_number": "101",
                                                                      "request_id": "rq-1"}), qos=1)
            await inbox.wait_for(lambda t, b: isinstance(b, dict) and b.get("request_id") == "rq-1")
        finally:
            await inbox.close()

    async def counted() -> bool:
        _, b = await h.get("/api/admin/site", ADMIN)
        return bool(b["data"]["live_calls"] == 1 and b["data"]["devices"]["online"] == 1)

    await h.until(counted, what="the live call and the online device counted")
    _, body = await h.get("/api/admin/site?devices=true", ADMIN)
    assert body["data"]["last_24h"]["calls"] == 1
    assert [d["device_id"] for d in body["data"]["device_status"]] == ["1"]
    assert body["data"]["device_status"][0]["online"] is True
    status, body = await h.get("/api/admin/site?devices=maybe", ADMIN)
    assert status == 400
    # the door gives up before anyone answers: a missed call of the last 24 h
    call_id = (await h.get("/api/calls?status=ringing", ADMIN))[1]["data"][0]["call_id"]
    status, body = await h.post("/sites/A/api/mqtt/controller/device",
                                {"call_info": {"call_id": call_id, "action": "cancelled"}}, ADMIN)
    assert status == 200, body
    _, body = await h.get("/sites/A/api/admin/site", ADMIN)
    assert body["data"]["live_calls"] == 0
    assert body["data"]["last_24h"] == {"calls": 1, "missed": 1, "failed": 0}


async def test_console_config_names_the_site_and_says_mqtt_is_not_the_browsers(site_a):
    h = site_a
    status, body = await h.get("/sites/A/api/console/config")
    assert status == 200
    assert body["data"]["site_id"] == "A"
    assert body["data"]["bridge"] is True
    assert body["data"]["mqtt"]["ws_port"] is None
    # the page under the prefix: its files are found relative to it
    async with h.http.get(h.base + "/sites/A", allow_redirects=False) as r:
        assert r.status == 308
        assert r.headers["Location"] == "/sites/A/"
    async with h.http.get(h.base + "/sites/A/") as r:
        assert r.status == 200
        page = await r.text()
    assert 'src="console/app.js"' in page
    async with h.http.get(h.base + "/sites/A/console/api.js") as r:
        assert r.status == 200
        assert "javascript" in r.headers["Content-Type"]


async def test_a_box_without_site_id_knows_no_site_and_keeps_its_plain_paths(make_harness):
    h = await make_harness()
    status, body = await h.get("/healthz")
    assert status == 200
    assert body["data"]["site_id"] is None
    status, body = await h.get("/sites/A/healthz")
    assert (status, body["data"]) == (404, {"reason": "unknown_site"})
    status, body = await h.get("/api/admin/site", ADMIN)
    assert status == 200
    assert body["data"]["site_id"] is None
    assert body["data"]["mode"] == "embedded"
    status, body = await h.get("/api/console/config")
    assert body["data"]["site_id"] is None
    assert body["data"]["bridge"] is False


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
async def test_the_console_in_bridge_mode_shows_its_site_and_works_over_rest(site_a, mosquitto, browser):
    """Under /sites/A/: the header names the site; Live, Site and History read over REST (a call placed over the
    external broker shows up without MQTT in the browser); the Simulator says it is not available here."""
    h = site_a
    t = await tabs(browser, h.base + "/sites/A")
    page = await t.open("live")
    await page.get_by_label("Admin token").fill(ADMIN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#site")).to_have_text("site A")
    await expect(page.locator("#link-state")).to_have_text("MQTT: external broker")
    await expect(page.locator("#page-live")).to_contain_text("read over REST")
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="door-1") as door:
        await door.subscribe("sites/A/devices/1/#", qos=1)
        inbox = Inbox(door)
        try:
            await door.publish("sites/A/devices/1/status", json.dumps({"online": True, "battery": 64}), qos=1)
            await door.publish("sites/A/calls/request/1", json.dumps({"household_number": "101",
                                                                      "request_id": "rq-1"}), qos=1)
            _, reply = await inbox.wait_for(lambda t, b: isinstance(b, dict) and b.get("request_id") == "rq-1")
        finally:
            await inbox.close()
    call_id = reply["call_id"]
    await expect(page.locator(f"#live-active tr[data-call-id='{call_id}']")).to_contain_text("ringing")
    device1 = page.locator("#live-devices tr[data-device-id='1']")
    await expect(device1).to_contain_text("online")
    await expect(device1).to_contain_text("64 %")
    await shot(page, "bridge-live")

    await page.get_by_role("link", name="Site").click()
    await expect(page.locator("#site-list")).to_contain_text("101")
    await page.get_by_role("link", name="History").click()
    await expect(page.locator(f"#history-table tr[data-call-id='{call_id}']")).to_be_visible()
    await page.get_by_role("link", name="Simulator").click()
    await expect(page.locator("#sim-unavailable")).to_contain_text("not available in bridge mode")
    await expect(page.locator("#sim-device")).to_have_count(0)
    assert "site A" in await page.title()
    # every request went to this site's prefix, none to the plain paths or anywhere else
    assert t.requests
    assert [u for u in t.requests if not u.startswith((h.base + "/sites/A/", "data:"))] == []
    assert t.errors == []
