"""The web console driving the resident features in a real headless Chromium against the real server.

Door unlock acked by the simulated station, visitor snapshots, do-not-disturb, no-answer forwarding,
lobby panels and missed-call counters, each set up and seen through the pages as a user would.
"""

from __future__ import annotations

import pytest

from tests.e2e.test_console_browser import CHROMIUM, live_link, shot, tabs
from tests.support.harness import ADMIN

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")

if CHROMIUM.exists():
    from playwright.async_api import Page, expect

    from tests.e2e.test_console_browser import browser  # noqa: F401  (the fixture)


async def sign_in(page: Page) -> None:
    await page.get_by_label("Admin token").fill(ADMIN)
    await page.get_by_role("button", name="Sign in").click()
    await live_link(page)


async def play(page: Page, household: str) -> None:
    await page.get_by_label("Household", exact=True).select_option(household)
    await page.get_by_role("button", name="Play its residents").click()


async def call_from(page: Page, device: str, household: str = "") -> None:
    await page.get_by_label("Door station", exact=True).select_option(device)
    await page.get_by_label("Calls household").select_option(household)
    await page.get_by_role("button", name="Call", exact=True).click()


async def test_open_door_from_the_resident_panel_with_a_snapshot_signed_in_as_admin(make_harness, browser):
    """Authenticated: the station attaches a canvas JPEG, resident 2 opens the door, the station acks over
    MQTT, the call ends `door_opened`; History shows "door opened by 2" and the snapshot as a loaded thumbnail."""
    h = await make_harness(auth={"allow_anonymous_on_loopback": False})
    t = await tabs(browser, h.base)
    page = await t.open("simulator")
    await sign_in(page)
    await play(page, "101")
    resident2 = page.get_by_role("region", name="Resident 2")
    await expect(resident2).to_contain_text("Missed calls: 0")
    await call_from(page, "1")
    door = page.locator("#sim-door")
    await expect(page.locator("#sim-door-state")).to_have_text("ringing")
    assert h.svc.store.get_status("1")["online"]  # the played station reported itself online

    await door.get_by_role("button", name="Attach snapshot").click()
    await expect(door).to_contain_text("snapshot attached")
    visitor = resident2.get_by_role("img", name="Visitor at device 1")  # the `snapshot` control message
    await expect(visitor).to_be_visible()
    assert await visitor.evaluate("img => img.complete && img.naturalWidth") == 160

    await resident2.get_by_role("button", name="Open door").click()
    await expect(page.locator("#sim-door-state")).to_have_text("ended")
    await expect(door).to_contain_text("door_opened")
    await expect(resident2.locator("h3 .badge")).to_have_text("ended")
    await expect(resident2).to_contain_text("door of device 1 opened (relay 1)")
    log = page.get_by_role("region", name="Message log")
    await expect(log.locator("tr.dir-in")).to_contain_text(["devices/1/commands"])
    await expect(log.locator("tr.dir-out")).to_contain_text(["devices/1/commands/ack", "users/2/commands"])
    await shot(page, "simulator-door")
    event = h.svc.doors.events({}, 5)[0]
    assert event["outcome"] == "opened"
    assert event["by"] == "2"
    assert event["device_id"] == "1"

    await page.get_by_role("link", name="History").click()
    call_id = event["call_id"]
    row = page.locator(f"#history-table tr[data-call-id='{call_id}']")
    await expect(row).to_contain_text("door_opened")
    await expect(row).to_contain_text("door opened by 2")
    thumb = row.get_by_role("img", name=f"Snapshot of {call_id}")
    await expect(thumb).to_be_visible()
    await expect(thumb).to_have_js_property("naturalWidth", 160)  # fetched with the admin token
    await shot(page, "history-features")
    assert t.foreign(h.server.ws_port) == []
    assert t.errors == []


async def test_site_dnd_forwarding_and_lobby_drive_the_calls(make_harness, browser):
    """Local-only: household DND set in Site ends a call `dnd` (a missed call for each resident); a device made a
    lobby panel calls another household, which forwards to resident 4: Live shows the second ring phase."""
    h = await make_harness(calls={"ring_timeout_s": 8})
    t = await tabs(browser, h.base)
    site = await t.open("site")
    hh101 = site.get_by_role("region", name="Household 101")
    dialog = site.locator("#site-edit")
    await hh101.get_by_role("button", name="Do not disturb for household 101").click()
    await dialog.get_by_role("checkbox", name="Do not disturb").check()
    await dialog.get_by_role("button", name="Save").click()
    await expect(hh101.locator(".household-settings")).to_contain_text("Do not disturb: on")
    assert h.svc.calls.dnd.view("household", "101")["enabled"] is True

    await site.get_by_role("button", name="Do not disturb for resident 3").click()
    await dialog.get_by_role("button", name="Add a time window").click()
    await dialog.get_by_label("From (window 1)").fill("23:00")
    await dialog.get_by_label("To (window 1)").fill("06:30")
    await dialog.get_by_role("checkbox", name="Do not disturb").check()
    await dialog.get_by_role("button", name="Save").click()
    await expect(hh101.locator("tr[data-id='3']")).to_contain_text("on 23:00–06:30")
    assert h.svc.calls.dnd.view("resident", "3")["schedule"] == [{"from": "23:00", "to": "06:30"}]

    sim = await t.open("simulator")
    await live_link(sim)
    await play(sim, "101")
    await play(sim, "102")
    await call_from(sim, "1")
    await expect(sim.locator("#sim-door-state")).to_have_text("ended")
    await expect(sim.locator("#sim-door")).to_contain_text("dnd")
    for rid in ("2", "3"):  # the retained counter, pushed after the call ended
        await expect(sim.get_by_role("region", name=f"Resident {rid}")).to_contain_text("Missed calls: 1")

    await site.bring_to_front()
    await hh101.get_by_role("button", name="Do not disturb for household 101").click()
    await dialog.get_by_role("checkbox", name="Do not disturb").uncheck()
    await dialog.get_by_role("button", name="Save").click()
    await expect(hh101.locator(".household-settings")).to_contain_text("Do not disturb: off")
    await hh101.get_by_role("button", name="Forwarding for household 101").click()
    await dialog.get_by_label("When nobody answers").select_option("to")
    await dialog.get_by_label("Forward to (resident ids, comma-separated)").fill("4")
    await dialog.get_by_label("Forward after (seconds)").fill("1.5")
    await dialog.get_by_role("button", name="Save").click()
    await expect(hh101.locator(".household-settings")).to_contain_text("Forwarding: 4 after 1.5 s")
    await site.get_by_role("button", name="Edit device 5").click()
    await expect(dialog.get_by_label("Lobby calls households")).to_be_disabled()  # a door calls its own
    await dialog.get_by_label("Kind").select_option("lobby")
    await dialog.get_by_label("Lobby calls households").fill("101")
    await dialog.get_by_label("Emergency (rings through do-not-disturb)").check()
    await dialog.get_by_role("button", name="Save").click()
    device5 = site.get_by_role("region", name="Household 102").locator("tr[data-id='5']")
    await expect(device5).to_contain_text("lobby · 101")
    await expect(device5).to_contain_text("yes")
    d5 = h.svc.directory.device("5")
    assert d5["kind"] == "lobby"
    assert d5["households"] == ["101"]
    assert d5["emergency"]
    await site.evaluate("document.getElementById('toasts').replaceChildren()")  # a clear picture
    await shot(site, "site-features")

    live = await t.open("live")
    await live_link(live)
    await sim.bring_to_front()
    await call_from(sim, "5", "101")  # the lobby panel calls household 101
    await expect(sim.locator("#sim-door-state")).to_have_text("ringing")
    call_id = (await sim.locator("#sim-door dd.mono").first.inner_text()).strip()
    resident2 = sim.get_by_role("region", name="Resident 2")
    await expect(resident2.locator("h3 .badge")).to_have_text("ringing")
    resident4 = sim.get_by_role("region", name="Resident 4")
    await expect(resident4.locator("h3 .badge")).to_have_text("ringing")  # after forward_after_s
    await expect(resident4).to_contain_text("forwarded call for household 101")
    await expect(resident2.locator("h3 .badge")).to_have_text("ended")
    await expect(sim.locator("#sim-door")).to_contain_text("forwarded to 4")
    row = live.locator(f"#live-active tr[data-call-id='{call_id}']")
    await expect(row).to_contain_text("forwarded → 4 (was 2, 3)")
    await expect(row.locator("td.timer")).to_contain_text("rings for 0:0")
    await live.bring_to_front()
    await shot(live, "live-forwarded")
    await sim.bring_to_front()
    await resident4.get_by_role("button", name="Answer").click()
    await expect(sim.locator("#sim-door-state")).to_have_text("connected")
    await resident4.get_by_role("button", name="Hang up").click()
    await expect(sim.locator("#sim-door-state")).to_have_text("ended")

    await resident2.get_by_role("button", name="Mark resident 2's missed calls seen").click()
    await expect(resident2).to_contain_text("Missed calls: 0")  # answered by the fallback: nobody's missed call
    await expect(sim.get_by_role("region", name="Resident 3")).to_contain_text("Missed calls: 1")

    await live.bring_to_front()
    await live.get_by_role("link", name="History").click()
    forwarded = live.locator(f"#history-table tr[data-call-id='{call_id}']")
    await expect(forwarded).to_contain_text("forwarded to 4")
    await expect(forwarded).to_contain_text("answered")
    dnd_row = live.locator("#history-table tbody tr").filter(has_text="skipped 2, 3")
    await expect(dnd_row).to_contain_text("dnd")
    assert t.foreign(h.server.ws_port) == []
    assert t.errors == []
