"""A web page from another origin cannot use the box, and a rebinding `Host` is refused (REST and WebSocket).

The browser test loads an attacker's page from a second aiohttp server (another origin on the same machine)
in Debian's Chromium; the page tries what a hostile page on the LAN would: a WebSocket subscription to `#`, `no-cors`
POSTs that start a call and re-issue a token. The plain HTTP tests check each rule and that the box's own
origin, and clients that send no `Origin`, are still served.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import websockets
from aiohttp import web
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from tests.e2e.test_console_browser import ARGS, CHROMIUM
from tests.support.harness import ADMIN, Harness

# The attacker's page: every attempt records its outcome in `window.results`, then sets `window.done`.
ATTACK = """<!doctype html><meta charset="utf-8"><title>attacker</title><script>
const box = "http://%(host)s:%(http)d", results = {};
function ws() {
  return new Promise(done => {
    const s = new WebSocket("ws://%(host)s:%(ws)d/mqtt", ["mqtt"]);
    s.binaryType = "arraybuffer";
    results.ws_opened = false; results.ws_bytes = 0;
    s.onopen = () => {
      results.ws_opened = true;
      // CONNECT (3.1.1, client id "x"), then SUBSCRIBE "#" QoS 0
      s.send(new Uint8Array([16,13,0,4,77,81,84,84,4,2,0,60,0,1,120]));
      s.send(new Uint8Array([130,6,0,1,0,1,35,0]));
    };
    s.onmessage = e => { results.ws_bytes += e.data.byteLength; };
    s.onerror = () => done();
    s.onclose = () => done();
    setTimeout(() => { s.close(); done(); }, 2500);
  });
}
async function post(name, path, body, type) {
  const init = {method: "POST", mode: "no-cors"};
  if (body !== undefined) { init.body = body; init.headers = {"Content-Type": type}; }
  try { await fetch(box + path, init); results[name] = "sent"; } catch (e) { results[name] = "error"; }
}
(async () => {
  await ws();
  await post("call_text", "/api/mqtt/call", JSON.stringify({device_id: "1"}), "text/plain");
  await post("call_form", "/api/mqtt/call", "device_id=5", "application/x-www-form-urlencoded");
  await post("token", "/api/admin/residents/3/token");
  window.results = results; window.done = true;
})();
</script>"""


@pytest.fixture
async def attacker_site() -> AsyncIterator[tuple[web.AppRunner, list[str]]]:
    """An aiohttp server on another port: the foreign origin. Yields the runner and a slot for the page."""
    page: list[str] = [""]
    app = web.Application()

    async def serve_page(_: web.Request) -> web.Response:
        return web.Response(text=page[0], content_type="text/html")

    app.router.add_get("/", serve_page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner, page
    await runner.cleanup()


def _port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


async def _retained_status(h: Harness) -> None:
    """Something retained under `#`, so a subscription that got through would receive bytes."""
    status, resp = await h.post("/api/mqtt/device/status", {"device_id": "1", "online": True, "battery": 50})
    assert status == 200, resp


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
@pytest.mark.parametrize("page_host", ["127.0.0.1", "localhost"])
async def test_a_foreign_page_in_a_real_browser_can_neither_subscribe_nor_post(make_harness, attacker_site,
                                                                                  page_host):
    """Chromium on a page from another local origin: the WebSocket is refused, no call starts, no token changes."""
    from playwright.async_api import async_playwright

    h = await make_harness()  # local-only mode: what a page on the same machine could reach before
    await _retained_status(h)
    old = await h.token("residents", "3")
    runner, page = attacker_site
    assert h.server.ws_port is not None
    page[0] = ATTACK % {"host": "127.0.0.1", "http": h.server.http_port, "ws": h.server.ws_port}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            tab = await browser.new_page()
            await tab.goto(f"http://{page_host}:{_port(runner)}/")
            await tab.wait_for_function("window.done === true", timeout=15_000)
            results = await tab.evaluate("window.results")
        finally:
            await browser.close()
    assert results["ws_opened"] is False, results
    assert results["ws_bytes"] == 0, results
    assert h.svc.store.active_calls() == [], results  # neither no-cors POST started a call
    status, _ = await h.get("/api/mqtt/session?call_id=none", token=old)  # the old token still works
    assert status != 401, results


async def test_websocket_handshake_from_a_foreign_origin_is_refused(make_harness):
    """Origin http://evil.example (and the box's own host on another port) gets 403; no Origin, the console's
    own origin, or the listener's own URL (what paho-mqtt sends) connects."""
    h = await make_harness()
    url = f"ws://127.0.0.1:{h.server.ws_port}/mqtt"
    for origin in ("http://evil.example", "http://127.0.0.1:1", "http://127.0.0.1", "null"):
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(url, origin=websockets.Origin(origin), subprotocols=[websockets.Subprotocol("mqtt")]):
                pass
        assert refused.value.response.status_code == 403, origin
    for origin in (None, f"http://127.0.0.1:{h.server.http_port}", f"http://localhost:{h.server.http_port}",
                   f"http://127.0.0.1:{h.server.ws_port}"):
        async with ws_connect(url, origin=websockets.Origin(origin) if origin else None,
                              subprotocols=[websockets.Subprotocol("mqtt")]) as ws:
            await ws.send(bytes([16, 13, 0, 4, 77, 81, 84, 84, 4, 2, 0, 60, 0, 1, 120]))
            assert (await asyncio.wait_for(ws.recv(), 5))[:1] == b"\x20", origin  # CONNACK


async def test_websocket_origin_listed_in_cors_origins_is_allowed(make_harness):
    """`http.cors_origins` admits a browser tool's origin to the WebSocket listener too."""
    h = await make_harness(http={"cors_origins": ["https://tools.example"]})
    url = f"ws://127.0.0.1:{h.server.ws_port}/mqtt"
    async with ws_connect(url, origin=websockets.Origin("https://tools.example"),
                          subprotocols=[websockets.Subprotocol("mqtt")]):
        pass


async def _raw_http(port: int, head: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode())
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return line.decode()


async def test_a_rebinding_host_header_is_refused_on_rest_and_websocket(make_harness):
    """`Host: rebind.attacker.example` gets 403 from REST and the WebSocket listener; the box's names pass."""
    h = await make_harness()
    async with h.http.get(f"{h.base}/api/calls", headers={"Host": "rebind.attacker.example"}) as r:
        assert r.status == 403, await r.text()
        assert (await r.json())["data"] == {"reason": "host_not_allowed"}
    for host in (f"127.0.0.1:{h.server.http_port}", "localhost", "LOCALHOST:1", "[::1]:8080"):
        async with h.http.get(f"{h.base}/api/calls", headers={"Host": host}) as r:
            assert r.status == 200, (host, await r.text())
    upgrade = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
    assert h.server.ws_port is not None
    assert " 403 " in await _raw_http(h.server.ws_port, f"GET /mqtt HTTP/1.1\r\nHost: rebind.attacker.example\r\n"
                                                        f"{upgrade}")
    assert " 101 " in await _raw_http(h.server.ws_port, f"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n{upgrade}")


async def test_allowed_hosts_names_the_box(make_harness):
    """With `http.allowed_hosts: [intercom.lan]`, that name passes and `localhost` (not listed) no longer does;
    the address the connection arrived on always does."""
    h = await make_harness(http={"allowed_hosts": ["intercom.lan"]})
    for host, expected in (("intercom.lan:8080", 200), ("localhost", 403), ("127.0.0.1", 200)):
        async with h.http.get(f"{h.base}/api/calls", headers={"Host": host}) as r:
            assert r.status == expected, (host, await r.text())


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_a_state_changing_request_must_be_json(make_harness, content_type):
    """A POST whose body is not declared `application/json` (a CORS "simple" request) gets 415, nothing done."""
    h = await make_harness()
    async with h.http.post(f"{h.base}/api/mqtt/call", data=json.dumps({"device_id": "1"}),
                           headers={"Content-Type": content_type}) as r:
        assert r.status == 415, await r.text()
    assert h.svc.store.active_calls() == []
    status, _ = await h.post("/api/mqtt/call", {"device_id": "1"})  # the same request as JSON
    assert status == 200


async def test_a_state_changing_request_from_a_foreign_origin_is_refused(make_harness):
    """POST/PUT/PATCH/DELETE with a foreign `Origin` get 403, even as JSON; the box's own origin and
    `http.cors_origins` pass; a GET from anywhere is still answered (the browser keeps it from the page)."""
    h = await make_harness(http={"cors_origins": ["https://tools.example"]})
    body = json.dumps({"device_id": "1"})
    headers = {"Content-Type": "application/json"}
    for method, path in (("POST", "/api/mqtt/call"), ("PUT", "/api/residents/2/dnd"),
                         ("PATCH", "/api/admin/residents/2"), ("DELETE", "/api/admin/residents/3"),
                         ("POST", "/api/admin/residents/3/token")):
        async with h.http.request(method, h.base + path, data=body,
                                  headers={**headers, "Origin": "http://evil.example"}) as r:
            assert r.status == 403, (method, path, await r.text())
            assert (await r.json())["data"] == {"reason": "origin_not_allowed"}
    assert h.svc.store.active_calls() == []
    for origin in (f"http://127.0.0.1:{h.server.http_port}", "https://tools.example"):
        async with h.http.post(f"{h.base}/api/mqtt/call", data=body, headers={**headers, "Origin": origin}) as r:
            assert r.status in (200, 409), (origin, await r.text())
    async with h.http.get(f"{h.base}/api/calls", headers={"Origin": "http://evil.example"}) as r:
        assert r.status == 200
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_snapshot_upload_keeps_its_jpeg_body_but_not_from_a_foreign_origin(make_harness):
    """`POST /api/calls/{id}/snapshot` takes `image/jpeg` (not JSON), and still refuses a foreign Origin."""
    h = await make_harness()
    call = await h.start_call("1")
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"
    url = f"{h.base}/api/calls/{call['call_id']}/snapshot?device_id=1"
    foreign = {"Content-Type": "image/jpeg", "Origin": "http://evil.example"}
    async with h.http.post(url, data=jpeg, headers=foreign) as r:
        assert r.status == 403, await r.text()
    async with h.http.post(url, data=jpeg, headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415, await r.text()
    async with h.http.post(url, data=jpeg, headers={"Content-Type": "image/jpeg"}) as r:
        assert r.status == 200, await r.text()


async def test_clients_without_origin_and_bodyless_posts_still_work(make_harness):
    """A bodyless POST (curl -X POST) and a DELETE without Content-Type are served; tokens from REST still work."""
    h = await make_harness()
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{h.base}/api/residents/3/calls/seen") as r:
            assert r.status == 200, await r.text()
        async with s.post(f"{h.base}/api/admin/residents/3/token", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 200, await r.text()


async def test_the_same_rules_hold_in_authenticated_mode(make_harness):
    """With tokens required, a foreign Origin is still refused (even with the admin's bearer token), a
    rebinding Host too, and the WebSocket handshake from a foreign page."""
    from tests.support.security import secure_harness

    h, _ = await secure_harness(make_harness)
    auth = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    async with h.http.post(f"{h.base}/api/admin/residents/3/token", headers={**auth, "Origin": "http://evil.example"},
                           data="{}") as r:
        assert r.status == 403
        assert (await r.json())["data"] == {"reason": "origin_not_allowed"}
    async with h.http.get(f"{h.base}/api/calls", headers={**auth, "Host": "rebind.attacker.example"}) as r:
        assert r.status == 403
    with pytest.raises(InvalidStatus):
        async with ws_connect(f"ws://127.0.0.1:{h.server.ws_port}/mqtt", origin=websockets.Origin("http://evil.example"),
                              subprotocols=[websockets.Subprotocol("mqtt")]):
            pass
    async with h.http.post(f"{h.base}/api/admin/residents/3/token", headers=auth, data="{}") as r:
        assert r.status == 200, await r.text()
