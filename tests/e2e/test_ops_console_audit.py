"""The console's Audit page in headless Chromium: sign-ins (a refused one too) and admin changes, newest first."""

from __future__ import annotations

import pytest

from tests.e2e.test_console_browser import CHROMIUM, browser, shot, tabs  # noqa: F401 - `browser` is a fixture
from tests.support.harness import ADMIN

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")

if CHROMIUM.exists():
    from playwright.async_api import expect


async def test_audit_page_lists_sign_ins_and_admin_changes(make_harness, browser):  # noqa: F811
    """A refused then a good sign-in, and a household added over REST, show on the Audit page with who and outcome."""
    h = await make_harness(auth={"allow_anonymous_on_loopback": False})
    assert (await h.post("/api/admin/households", {"household_number": "301"}, ADMIN))[0] == 200
    t = await tabs(browser, h.base)
    page = await t.open("audit")
    await page.get_by_label("Admin token").fill("nope-not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#signin-error")).to_contain_text("invalid or expired token")
    await page.get_by_label("Admin token").fill(ADMIN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Audit")).to_be_visible()
    rows = page.locator("#audit-table tbody tr")
    await expect(rows.first).to_contain_text("console.sign_in")
    await expect(rows.first).to_contain_text("admin:admin")
    texts = await rows.all_inner_texts()
    assert any("console.sign_in" in r and "401" in r and "unknown" in r for r in texts), texts
    assert any("admin.create" in r and "households/301" in r for r in texts), texts
    await expect(page.locator('#nav a[href="#audit"]')).to_have_attribute("aria-current", "page")
    await shot(page, "audit")
    assert [e for e in t.errors if "status of 401" not in e] == []  # the refused sign-in is the only failure
