"""The web console in a real headless Chromium (Debian's `chromium`) against the real server.

Each test takes a screenshot of the page it drives, into a temp dir; with INTERCOM_SCREENSHOTS=docs/screenshots
they refresh the README's pictures.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.harness import ADMIN

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(os.environ.get("INTERCOM_SCREENSHOTS") or tempfile.mkdtemp(prefix="console-shots-"))
SHOTS.mkdir(parents=True, exist_ok=True)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")

if CHROMIUM.exists():
    from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

    expect.set_options(timeout=10_000)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        await b.close()


class Tabs:
    """Pages of one browser context, with every request they make recorded."""

    def __init__(self, context: BrowserContext, base: str) -> None:
        self.context = context
        self.base = base
        self.requests: list[str] = []
        self.errors: list[str] = []

    async def open(self, page_name: str = "live") -> Page:
        page = await self.context.new_page()
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        await page.goto(f"{self.base}/#{page_name}")
        return page

    def foreign(self, ws_port: int) -> list[str]:
        """Requests to anything but the box itself."""
        own = (self.base + "/", f"ws://127.0.0.1:{ws_port}/", "blob:http://127.0.0.1", "data:")
        return [u for u in self.requests if not u.startswith(own)]


async def tabs(browser: Browser, base: str, **context_options) -> Tabs:
    context = await browser.new_context(viewport={"width": 1100, "height": 860}, **context_options)
    return Tabs(context, base)


async def shot(page: Page, name: str) -> None:
    await page.bring_to_front()  # a background tab paints no frames, and a screenshot waits for one
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def live_link(page: Page) -> None:
    await expect(page.locator("#link-state")).to_have_text("MQTT: live")


async def test_call_from_the_simulator_answered_in_a_second_page_shows_in_live_and_history(make_harness, browser):
    """Door tab calls, resident tab answers then hangs up; Live shows connected then ended, History the outcome."""
    h = await make_harness()
    missed = await h.start_call("5")  # household 102: cancelled by its door, so it is a missed call
    assert (await h.post("/api/mqtt/controller/device", {"call_info": {"call_id": missed["call_id"],
                                                                       "action": "cancelled"}}))[0] == 200
    status = {"device_id": "1", "online": True, "battery": 87, "properties": {"firmware": "2.4.1"}}
    assert (await h.post("/api/mqtt/device/status", status))[0] == 200
    t = await tabs(browser, h.base, accept_downloads=True)
    live = await t.open("live")
    await live_link(live)
    device1 = live.locator("#live-devices tr[data-device-id='1']")
    await expect(device1).to_contain_text("online")  # the retained status, delivered on subscribe
    await expect(device1).to_contain_text("87 %")
    await expect(device1).to_contain_text("2.4.1")
    assert (await h.post("/api/mqtt/device/status", {"device_id": "5", "online": False, "battery": 12}))[0] == 200
    await expect(live.locator("#live-devices tr[data-device-id='5']")).to_contain_text("offline")  # pushed live
    await expect(live.locator("#live-ended")).to_contain_text(missed["call_id"])

    phone = await t.open("simulator")
    await live_link(phone)
    await phone.get_by_label("Household", exact=True).select_option("101")
    await phone.get_by_role("button", name="Play its residents").click()
    resident2 = phone.get_by_role("region", name="Resident 2")
    await expect(resident2).to_contain_text("Waiting for a call")

    door = await t.open("simulator")
    await live_link(door)
    await door.get_by_label("Door station", exact=True).select_option("1")
    await door.get_by_role("button", name="Call").click()
    await expect(door.locator("#sim-door-state")).to_have_text("ringing")
    await expect(door.locator("#sim-door")).to_contain_text(str(h.svc.trtc.sdk_app_id))  # the TRTC credentials
    await expect(door.locator("#sim-door .usersig")).to_be_visible()
    call_id = (await door.locator("#sim-door dd.mono").first.inner_text()).strip()
    assert call_id.startswith("call-")

    await expect(resident2.locator(".badge")).to_have_text("ringing")
    await expect(live.locator(f"#live-active tr[data-call-id='{call_id}']")).to_contain_text("ringing")
    await expect(live.locator(f"#live-active tr[data-call-id='{call_id}'] td.timer")).to_contain_text("rings for 0:")
    await resident2.get_by_role("button", name="Answer").click()

    row = live.locator(f"#live-active tr[data-call-id='{call_id}']")
    await expect(row.locator(".badge")).to_have_text("connected")
    await expect(row).to_contain_text("ends in")
    await expect(door.locator("#sim-door-state")).to_have_text("connected")
    await expect(phone.get_by_role("region", name="Resident 3").locator(".badge")).to_have_text("ended")
    await shot(live, "live")

    await resident2.get_by_role("button", name="Hang up").click()
    ended = live.locator(f"#live-ended tr[data-call-id='{call_id}']")
    await expect(ended).to_contain_text("hangup")
    await expect(row).to_have_count(0)
    await expect(door.locator("#sim-door-state")).to_have_text("ended")
    log = phone.get_by_role("region", name="Message log")
    await expect(log).to_contain_text("users/2/calls/incoming")
    await expect(log.locator("tr.dir-out")).to_contain_text(["users/2/calls/control", "users/2/calls/control"])
    await shot(phone, "simulator")

    await live.get_by_role("link", name="History").click()
    hist = live.locator(f"#history-table tr[data-call-id='{call_id}']")
    await expect(hist).to_contain_text("answered")
    await expect(hist).to_contain_text("hangup")
    await expect(live.locator("#history-chart svg")).to_have_attribute(
        "aria-label", "Last 7 days: 1 answered, 1 missed, 0 rejected")
    async with live.expect_download() as download:
        await live.get_by_role("button", name="Export CSV").click()
    csv_path = await (await download.value).path()
    csv = await asyncio.to_thread(Path(csv_path).read_text)
    assert call_id in csv
    assert missed["call_id"] in csv
    assert csv.startswith("Started,Call,")
    await shot(live, "history")
    await live.get_by_label("Missed only").check()
    await live.get_by_role("button", name="Apply").click()
    await expect(live.locator("#history-table tbody tr")).to_have_count(1)
    await expect(live.locator("#history-table tbody")).to_contain_text(missed["call_id"])

    assert t.foreign(h.server.ws_port) == []
    assert t.errors == []


async def test_adding_a_resident_shows_its_token_once_and_a_failing_call_shows_its_error(make_harness, browser):
    """The new resident's token is shown with a working Copy button; a refused add shows the server's message."""
    h = await make_harness()
    t = await tabs(browser, h.base)
    await t.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = await t.open("site")
    add = page.get_by_role("form", name="Add a resident")
    await add.get_by_label("Resident id").fill("7")
    await add.get_by_label("Household", exact=True).select_option("101")
    await add.get_by_label("Name").fill("Resident seven")
    await add.get_by_role("button", name="Add resident").click()
    token_box = page.locator("#site-token-value")
    await expect(token_box).to_have_value(re.compile(r"^resident\.7\.\S{16,}$"))
    token = await token_box.input_value()
    assert (await h.svc.directory.authenticate(token)).id == "7"  # the shown token is the one that works
    await page.get_by_role("button", name="Copy").click()
    await expect(page.locator("#toasts")).to_contain_text("Token copied")
    assert await page.evaluate("navigator.clipboard.readText()") == token
    await expect(page.get_by_role("region", name="Household 101")).to_contain_text("Resident seven")
    await shot(page, "site")

    await add.get_by_label("Resident id").fill("7")
    await add.get_by_role("button", name="Add resident").click()
    await expect(page.locator("#toasts")).to_contain_text("resident '7' already exists")

    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
    await page.get_by_role("button", name="Edit resident 7").click()
    await page.locator("#site-edit").get_by_label("Name").fill("Seven, renamed")
    await page.locator("#site-edit").get_by_role("button", name="Save").click()
    await expect(page.get_by_role("region", name="Household 101")).to_contain_text("Seven, renamed")
    await page.get_by_role("button", name="Delete resident 7").click()
    await expect(page.get_by_role("region", name="Household 101")).not_to_contain_text("Seven, renamed")
    assert "7" not in {r["resident_id"] for r in h.svc.directory.list_all("residents")}


async def test_what_is_typed_in_an_add_form_survives_the_site_reloading(make_harness, browser):
    """The add forms are rebuilt whenever the site (re)loads; half-typed input stays (a fill racing the first
    load used to be wiped, and so did a user's typing when another form added something)."""
    h = await make_harness()
    t = await tabs(browser, h.base)
    page = await t.open("site")
    await expect(page.get_by_role("region", name="Household 101")).to_be_visible()
    device = page.get_by_role("form", name="Add a device")
    await device.get_by_label("Device id").fill("9")
    await device.get_by_label("Name").fill("Garage door")
    household = page.get_by_role("form", name="Add a household")
    await household.get_by_label("Household number").fill("103")
    await household.get_by_role("button", name="Add household").click()
    await expect(page.get_by_role("region", name="Household 103")).to_be_visible()  # the site reloaded
    await expect(device.get_by_label("Device id")).to_have_value("9")
    await expect(device.get_by_label("Name")).to_have_value("Garage door")
    await expect(household.get_by_label("Household number")).to_have_value("")  # the form that was sent resets


async def test_authenticated_console_needs_the_admin_token_and_logs_what_it_simulates(make_harness, browser, caplog):
    """Sign-in refuses bad and non-admin tokens; the admin token stays out of the URL; simulated parties are logged."""
    h = await make_harness(auth={"allow_anonymous_on_loopback": False})
    resident = await h.token("residents", "2")
    caplog.set_level(logging.INFO, logger="intercom.acl")
    t = await tabs(browser, h.base)
    page = await t.open("live")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.locator("#nav")).to_be_hidden()
    await shot(page, "signin")
    # the English detail first (readable without a CJK font), then the status and its category
    for bad, message in (("nope-not-a-token", "invalid or expired token (401 未授权)"),
                         (resident, "not the admin token")):
        await page.get_by_label("Admin token").fill(bad)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator("#signin-error")).to_contain_text(message)
    await page.get_by_label("Admin token").fill(ADMIN)
    await page.get_by_role("button", name="Sign in").click()
    await live_link(page)
    assert await page.evaluate("sessionStorage.getItem('intercom.adminToken')") == ADMIN
    assert ADMIN not in page.url
    assert not [u for u in t.requests if ADMIN in u]

    await page.get_by_role("link", name="Simulator").click()
    await page.get_by_label("Door station", exact=True).select_option("1")
    await page.get_by_role("button", name="Call").click()
    await expect(page.locator("#sim-door-state")).to_have_text("ringing")
    assert h.svc.calls.active_count == 1
    simulated = [r.getMessage() for r in caplog.records if "simulated" in r.getMessage()]
    assert len(simulated) == 1
    assert "'admin/console-" in simulated[0]
    assert "device 1" in simulated[0]

    await page.reload()  # the session keeps the tab signed in
    await live_link(page)
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('intercom.adminToken')") is None


async def test_api_explorer_tries_endpoints_from_the_browser(make_harness, browser):
    """The explorer lists the spec's operations and sends a GET and a POST with the body it pre-filled."""
    h = await make_harness()
    t = await tabs(browser, h.base)
    page = await t.open("api")
    health = page.locator("details.op[data-op='GET /healthz']")
    await health.locator("summary").click()
    await health.get_by_role("button", name="Send").click()
    await expect(health.locator(".response")).to_contain_text("HTTP 200")
    await expect(health.locator(".response-body")).to_contain_text('"broker": true')

    create = page.locator("details.op[data-op='POST /api/admin/{kind}']")
    await create.locator("summary").click()
    await create.get_by_label(re.compile("^kind")).select_option("households")
    body = create.get_by_label("JSON body")
    await expect(body).to_have_value(re.compile('"household_number": ""'))
    await body.fill('{"household_number": "201", "name": "From the explorer"}')
    await create.get_by_role("button", name="Send").click()
    await expect(create.locator(".response")).to_contain_text("HTTP 200")
    assert h.svc.directory.get("households", "201")["name"] == "From the explorer"
    await body.fill('{"household_number": "201"}')
    await create.get_by_role("button", name="Send").click()
    await expect(create.locator(".response")).to_contain_text("HTTP 409")
    await shot(page, "api")


async def test_console_fits_a_phone_and_works_from_the_keyboard(make_harness, browser):
    """At 390 px wide no page scrolls sideways, and the pages are reachable with Tab and Enter."""
    h = await make_harness()
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    t = Tabs(context, h.base)
    page = await t.open("live")
    await live_link(page)
    for name in ("live", "site", "history", "simulator", "api"):
        await page.goto(f"{h.base}/#{name}")
        await expect(page.locator(f"#page-{name}")).to_be_visible()
        await page.wait_for_timeout(200)
        width = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], (name, width)
        if name == "live":
            await shot(page, "live-phone")

    await page.goto(f"{h.base}/#live")
    await page.locator("body").click(position={"x": 5, "y": 300})
    await page.keyboard.press("Shift+Tab")  # from the page body back up into the navigation
    for _ in range(12):
        if await page.evaluate("document.activeElement.textContent") == "Site":
            break
        await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await expect(page.locator("#page-site")).to_be_visible()
    assert await page.evaluate("document.activeElement.tagName + ':' + document.activeElement.textContent") == "H2:Site"


async def test_site_search_paging_and_device_health(make_harness, browser):
    """Site pages 20 households at a time and finds one through a resident's id; a device's health dialog shows its
    online/offline and battery changes."""
    h = await make_harness()
    for i in range(45):
        h.svc.directory.add_household(f"3{i:02d}", f"Flat {i}")
        h.svc.directory.add_member("residents", f"res{i}", f"3{i:02d}", f"Tenant {i}")
    for report in ({"online": True, "battery": 90}, {"battery": 60}, {"online": False, "battery": 40}):
        assert (await h.post("/api/mqtt/device/status", {"device_id": "1", **report}))[0] == 200
    t = await tabs(browser, h.base)
    page = await t.open("site")
    await expect(page.locator("#site-pages")).to_have_text("Households 1–20 of 47")
    await expect(page.locator("#site-list > section")).to_have_count(20)
    await page.get_by_role("button", name="Next").click()
    await expect(page.locator("#site-pages")).to_have_text("Households 21–40 of 47")
    await page.get_by_label("Search").fill("res33")
    await expect(page.locator("#site-list > section")).to_have_count(1)
    await expect(page.get_by_role("region", name="Household 333")).to_contain_text("Tenant 33")
    await page.get_by_label("Search").fill("")
    await page.get_by_role("button", name="Health of device 1").click()
    dialog = page.locator("#device-health")
    await expect(dialog.locator(".health-summary")).to_contain_text("battery 90 % → 40 % (lowest 40 %)")
    await expect(dialog.locator("tbody tr")).to_have_count(3)
    await expect(dialog.locator("tbody tr").first).to_contain_text("offline")
    await shot(page, "site-health")
    assert t.errors == []


async def test_history_pages_searches_and_exports_a_date_range(make_harness, browser):
    """60 calls: 50 on the first page, 10 on the next; search by call id; Export range downloads all 60 as CSV."""
    h = await make_harness()
    made = []
    for _ in range(60):
        call_id = (await h.start_call("1"))["call_id"]
        assert (await h.post("/api/mqtt/end-session", {"call_id": call_id}))[0] == 200
        made.append(call_id)
    t = await tabs(browser, h.base, accept_downloads=True)
    page = await t.open("history")
    rows = page.locator("#history-table tbody tr")
    await expect(rows).to_have_count(50)
    await expect(page.locator("#history-page")).to_have_text("Page 1")
    await page.get_by_role("button", name="Older").click()
    await expect(rows).to_have_count(10)
    await expect(page.locator("#history-table tbody")).to_contain_text(made[0])
    await expect(page.get_by_role("button", name="Older")).to_be_disabled()
    await page.get_by_role("button", name="Newer").click()
    await expect(rows).to_have_count(50)
    await page.get_by_label("Search").fill(made[7])
    await page.get_by_role("button", name="Apply").click()
    await expect(rows).to_have_count(1)
    await page.get_by_label("Search").fill("")
    today = await page.evaluate("new Date().toLocaleDateString('en-CA')")  # YYYY-MM-DD, the browser's day
    await page.get_by_label("From", exact=True).fill(today)
    await page.get_by_label("To", exact=True).fill(today)
    async with page.expect_download() as download:
        await page.get_by_role("button", name="Export range").click()
    text = await asyncio.to_thread(Path(await (await download.value).path()).read_text)
    lines = text.strip().splitlines()
    assert lines[0].startswith("call_id,start_time,")
    assert len(lines) == 61
    assert {line.split(",")[0] for line in lines[1:]} == set(made)
    assert t.errors == []


async def test_tables_fit_a_phone_without_hidden_columns(make_harness, browser):
    """At 390 px every Site and History table fits its box: no column is cut off or left to sideways scrolling."""
    h = await make_harness()
    call_id = (await h.start_call("1"))["call_id"]
    assert (await h.post("/api/mqtt/end-session", {"call_id": call_id}))[0] == 200
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    t = Tabs(context, h.base)
    page = await t.open("site")
    for name, table in (("site", "#site-list table"), ("history", "#history-table table")):
        await page.goto(f"{h.base}/#{name}")
        await expect(page.locator(table).first).to_be_visible()
        widths = await page.eval_on_selector_all(
            table, "ts => ts.map(t => [t.scrollWidth, t.parentElement.clientWidth])")
        assert widths, (name, widths)
        assert all(inner <= outer for inner, outer in widths), (name, widths)
        if name == "history":
            await expect(page.locator("#history-table td[data-label='Call']")).to_contain_text(call_id)
            await shot(page, "history-phone")
