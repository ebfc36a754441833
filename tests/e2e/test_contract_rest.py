"""The seed contract over REST: what a client coded against the seed meets (methods, CORS, bad input, texts)."""

from __future__ import annotations

import json
import logging
import re

import pytest

from tests.support.harness import ADMIN

ORIGIN = "http://console.local"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
CATEGORY = {400: "无效的请求参数", 401: "未授权", 403: "禁止访问", 404: "资源不存在", 405: "方法不允许",
            409: "状态冲突", 413: "请求体过大", 429: "请求过于频繁", 500: "服务器内部错误", 503: "服务暂不可用"}


def _no_error_logs(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


# wrong methods: 405 with Allow --------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/api/mqtt/call", "POST"),
    ("POST", "/api/mqtt/session", "GET"),
    ("PUT", "/api/devices/1/status", "GET"),
    ("OPTIONS", "/api/mqtt/call", "POST"),
])
async def test_wrong_method_is_405_envelope_with_allow(harness, caplog, method, path, allow):
    """A wrong method (OPTIONS outside CORS included) is a 405 envelope with an Allow header, not a 500."""
    async with harness.http.request(method, harness.base + path) as r:
        body = await r.json()
        assert r.status == 405, await r.text()
        assert r.content_type == "application/json", await r.text()
        assert allow in r.headers["Allow"]
    assert body["code"] == 405
    assert body["data"] is None
    assert body["message"].startswith("方法不允许: ")
    assert method in body["message"]
    assert allow in body["message"]
    _no_error_logs(caplog)


async def test_cors_preflight_and_actual_responses(make_harness):
    """An allowed origin's preflight is answered; its responses (errors too) carry CORS headers; others get none."""
    h = await make_harness(http={"cors_origins": [ORIGIN]})
    pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    async with h.http.options(h.base + "/api/mqtt/call", headers=pre) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        allowed_headers = r.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed_headers
        assert "content-type" in allowed_headers
        assert "Origin" in r.headers["Vary"]
    async with h.http.options(h.base + "/api/mqtt/call", headers={**pre, "Origin": "http://evil.example"}) as r:
        body = await r.json()
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
        assert body["message"].startswith("禁止访问: ")
        assert "cors_origins" in body["message"]
    for path, status in (("/healthz", 200), ("/api/devices/nope/status", 404)):
        async with h.http.get(h.base + path, headers={"Origin": ORIGIN}) as r:
            assert r.status == status
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        async with h.http.get(h.base + path, headers={"Origin": "http://evil.example"}) as r:
            assert r.status == status
            assert "Access-Control-Allow-Origin" not in r.headers


async def test_cors_is_off_by_default(harness):
    """With no `http.cors_origins` no origin is allowed: a preflight is refused with 403."""
    pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    async with harness.http.options(harness.base + "/api/mqtt/call", headers=pre) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers


# hostile bodies -----------------------------------------------------------------------------------

async def test_deeply_nested_body_is_400(harness, caplog):
    """A body of 60,000 `[` is a 400 naming the body, not a RecursionError 500."""
    status, resp = await harness.post("/api/mqtt/call", None, raw=b"[" * 60_000)
    assert status == 400, resp
    assert resp["message"].startswith("无效的请求参数: body"), resp
    status, resp = await harness.post("/api/mqtt/device/status", None,
                                      raw=b'{"device_id":"1","properties":' + b'{"a":' * 100 + b"1" + b"}" * 101)
    assert status == 400, resp
    assert "properties" in resp["message"], resp
    _no_error_logs(caplog)


@pytest.mark.parametrize("limit", ["²", "0", "-1", "1.5", "١٢", "abc", "1" * 12])
async def test_bad_history_limit_is_400(harness, caplog, limit):
    """`limit` must be a positive ASCII integer; anything else is a 400 naming `limit`."""
    status, resp = await harness.get(f"/api/calls?limit={limit}")
    assert status == 400, resp
    assert resp["message"].startswith("无效的请求参数: limit"), resp
    _no_error_logs(caplog)


async def test_good_history_limit(harness):
    """A positive limit is accepted, and one above `calls.history_limit_max` is capped."""
    for limit in ("1", "50", "100000"):
        status, _ = await harness.get(f"/api/calls?limit={limit}")
        assert status == 200


# non-finite numbers -------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "raw"), [
    ("/api/mqtt/device/status", b'{"device_id": "1", "properties": {"t": NaN}}'),
    ("/api/mqtt/device/status", b'{"device_id": "1", "properties": {"t": -Infinity}}'),
    ("/api/mqtt/device/status", b'{"device_id": "1", "properties": {"t": 1e400}}'),
    ("/api/mqtt/device/status", b'{"device_id": "1", "battery": NaN}'),
    ("/api/mqtt/device/status", b'{"device_id": "1", "properties": {"t": "\\ud800"}}'),
    ("/api/mqtt/system/message", b'{"type": "n", "level": "info", "message": "m", "data": {"x": Infinity}}'),
])
async def test_non_finite_numbers_are_refused(harness, path, raw):
    """NaN, Infinity, overflowing numbers and lone surrogates are a 400; nothing is stored or emitted."""
    status, resp = await harness.post(path, None, raw=raw)
    assert status == 400, resp
    assert resp["message"].startswith("无效的请求参数: "), resp
    assert (await harness.get("/api/devices/1/status"))[0] == 404


# partial status updates ---------------------------------------------------------------------------

async def test_partial_status_update_keeps_fields(harness):
    """Omitted fields keep their value, an explicit null clears one, `properties` merges by key."""
    full = {"device_id": "1", "online": True, "battery": 85, "properties": {"fw": "1.2.3", "wifi": 78}}
    assert (await harness.post("/api/mqtt/device/status", full))[0] == 200
    assert (await harness.post("/api/mqtt/device/status", {"device_id": "1", "online": False}))[0] == 200
    data = (await harness.get("/api/devices/1/status"))[1]["data"]
    assert data["online"] is False
    assert data["battery"] == 85
    assert data["properties"] == {"fw": "1.2.3", "wifi": 78}
    await harness.post("/api/mqtt/device/status", {"device_id": "1", "properties": {"wifi": None, "temp": 36.5}})
    data = (await harness.get("/api/devices/1/status"))[1]["data"]
    assert data["properties"] == {"fw": "1.2.3", "temp": 36.5}
    assert data["battery"] == 85
    await harness.post("/api/mqtt/device/status", {"device_id": "1", "battery": 42.5})
    assert (await harness.get("/api/devices/1/status"))[1]["data"]["battery"] == 42.5
    await harness.post("/api/mqtt/device/status", {"device_id": "1", "battery": None, "properties": None})
    data = (await harness.get("/api/devices/1/status"))[1]["data"]
    assert data["battery"] is None
    assert data["properties"] == {}
    assert data["online"] is False


@pytest.mark.parametrize("battery", ["85", True, 100.5, -1])
async def test_bad_battery_is_400(harness, battery):
    """`battery` is a number from 0 to 100: strings, booleans and out-of-range values are refused."""
    status, resp = await harness.post("/api/mqtt/device/status", {"device_id": "1", "battery": battery})
    assert status == 400
    assert "battery" in resp["message"]


# error texts by category --------------------------------------------------------------------------

async def test_every_rest_error_starts_with_its_category(make_harness):
    """400/401/403/404/405/409/413 texts start with the category for their status, then an English detail."""
    h = await make_harness()
    call_id = (await h.start_call())["call_id"]
    token = (await h.post("/api/admin/residents/4/token", None, token=ADMIN))[1]["data"]["token"]
    cases = [
        await h.post("/api/mqtt/call", {}),
        await h.post("/api/mqtt/call", {"device_id": "1"}, token="nope.x.yyyyyyyyyyyyyyyyyyyyyy"),
        await h.get(f"/api/mqtt/session?call_id={call_id}", token=token),
        await h.get("/api/mqtt/session?call_id=call-x"),
        await h.post("/api/mqtt/call", {"device_id": "1"}),
        await h.post("/api/mqtt/system/message", None,
                     raw=json.dumps({"type": "x", "level": "info", "message": "m" * 100_000}).encode()),
    ]
    async with h.http.get(h.base + "/api/mqtt/call") as r:
        cases.append((r.status, await r.json()))
    assert sorted({s for s, _ in cases}) == [400, 401, 403, 404, 405, 409, 413]
    for status, body in cases:
        assert body["code"] == status, body
        assert body["message"].startswith(CATEGORY[status] + ": "), body
        assert len(body["message"]) > len(CATEGORY[status]) + 2


async def test_conflicts_carry_a_reason(harness):
    """409s tell busy, an ended call and an out-of-order action apart by `data.reason`."""
    call_id = (await harness.start_call())["call_id"]
    status, resp = await harness.post("/api/mqtt/call", {"device_id": "1"})
    assert status == 409
    assert resp["data"]["reason"] == "busy"
    ctl = "/api/mqtt/controller/resident"
    await harness.post(ctl, {"resident_id": "2", "call_info": {"call_id": call_id, "action": "answered"}})
    answer3 = {"resident_id": "3", "call_info": {"call_id": call_id, "action": "answered"}}
    status, resp = await harness.post(ctl, answer3)
    assert status == 409
    assert resp["data"]["reason"] == "invalid_transition"
    await harness.post("/api/mqtt/end-session", {"call_id": call_id})
    status, resp = await harness.post(ctl, {"resident_id": "2", "call_info": {"call_id": call_id, "action": "hangup"}})
    assert status == 409
    assert resp["data"]["reason"] == "call_ended"
    status, resp = await harness.post("/api/mqtt/end-session", {"call_id": call_id})
    assert status == 409
    assert resp["data"]["reason"] == "call_ended"
    status, resp = await harness.post("/api/admin/households", {"household_number": "101"})
    assert status == 409
    assert resp["data"]["reason"] == "already_exists"


# ISO-8601 UTC times -------------------------------------------------------------------------------

async def test_admin_times_are_iso_utc(harness):
    """The admin API returns `created_at` as ISO-8601 UTC with Z, like every other REST time."""
    status, resp = await harness.post("/api/admin/households", {"household_number": "103"})
    assert status == 200, resp
    assert ISO_Z.match(resp["data"]["created_at"]), resp
    for path in ("/api/admin/households", "/api/admin/residents", "/api/admin/devices"):
        rows = (await harness.get(path))[1]["data"]
        assert rows, rows
        assert all(ISO_Z.match(r["created_at"]) for r in rows), rows
    assert ISO_Z.match((await harness.get("/api/admin/devices/1"))[1]["data"]["created_at"])


# ambiguous resident actions -----------------------------------------------------------------------

async def test_ambiguous_resident_action_says_what_to_add(harness):
    """On a call ringing two residents, the admin's resident action naming nobody is a 400 naming `resident_id`
    and the token (an anonymous local-only caller acts for the household: tests/e2e/test_seed_literal.py)."""
    call_id = (await harness.start_call())["call_id"]
    status, resp = await harness.post("/api/mqtt/controller/resident",
                                      {"call_info": {"call_id": call_id, "action": "answered"}}, ADMIN)
    msg = resp["message"]
    assert status == 400
    assert msg.startswith("无效的请求参数: resident_id")
    assert '"resident_id"' in msg, msg
    assert "Authorization: Bearer" in msg, msg
    assert "2, 3" in msg, msg
    assert resp["data"]["reason"] == "resident_id_required"
