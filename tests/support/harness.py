"""The real server in-process on ephemeral ports, and one `Harness` to talk to it over REST and MQTT."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import yaml

from broker.config import Settings, load_settings
from broker.server import IntercomServer
from tests.support import waits

ADMIN = "test-admin-token-0123456789abcdef"


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """Two households (101: residents 2, 3 and device 1; 102: resident 4 and device 5); `sections` merged in."""
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "mqtt_port": 0, "ws_port": 0, "http_port": 0, "data_dir": str(tmp_path)},
        "auth": {"pbkdf2_iterations": 1000},
        # a shared CI box stalls the loop for hundreds of ms now and then: load shedding on loop lag has its own
        # tests (tests/core/test_admission.py), elsewhere it would refuse calls a test needs
        "calls": {"max_loop_lag_ms": 10_000},
        # likewise /healthz's loop-lag check (tests/e2e/test_ops*.py set their own): a 1 s stall of a loaded CI box
        # would turn a healthy site 503 in tests that check something else
        "metrics": {"max_loop_lag_ms": 10_000},
        "trtc": {"secret_key": "test-trtc-secret"},
        "site": {"households": [
            {"household_number": "101", "residents": [{"resident_id": "2"}, {"resident_id": "3"}],
             "devices": [{"device_id": "1"}]},
            {"household_number": "102", "residents": [{"resident_id": "4"}], "devices": [{"device_id": "5"}]},
        ]},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}

    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_settings(path, env={"INTERCOM_ADMIN_TOKEN": ADMIN})


class Harness:
    """A running server plus helpers to talk to it: REST as (status, JSON body), MQTT clients, tokens, waits."""

    def __init__(self, server: IntercomServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def svc(self) -> Any:
        return self.server.services

    async def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                      raw: bytes | None = None, send_body: bool = True) -> tuple[int, Any]:
        """One REST call: (status, decoded JSON). `raw` is sent as it is instead of `body` as JSON."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if send_body:
            data = raw if raw is not None else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        async with self.http.request(method, self.base + path, data=data, headers=headers) as r:
            return r.status, await r.json()

    async def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        return await self.request("GET", path, token=token, send_body=False)

    async def delete(self, path: str, token: str | None = None) -> tuple[int, Any]:
        return await self.request("DELETE", path, token=token, send_body=False)

    async def post(self, path: str, body: Any, token: str | None = None, raw: bytes | None = None) -> tuple[int, Any]:
        return await self.request("POST", path, body, token, raw)

    async def put(self, path: str, body: Any, token: str | None = None, raw: bytes | None = None) -> tuple[int, Any]:
        return await self.request("PUT", path, body, token, raw)

    async def patch(self, path: str, body: Any, token: str | None = None, raw: bytes | None = None) -> tuple[int, Any]:
        return await self.request("PATCH", path, body, token, raw)

    async def token(self, kind: str, ident: str) -> str:
        """Issue a token for a resident or device (`kind` "residents" or "devices") through the admin API."""
        status, resp = await self.post(f"/api/admin/{kind}/{ident}/token", {}, ADMIN)
        assert status == 200, resp
        return str(resp["data"]["token"])

    @staticmethod
    async def until(pred: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = "") -> None:
        """Until `pred` is true (see `tests.support.waits.until`)."""
        await waits.until(pred, timeout, what)

    def session_state(self, client_id: str) -> str | None:
        """The broker's session for `client_id`: "connected", "disconnected" (kept offline) or None (none kept)."""
        entry = self.server.broker._sessions.get(client_id)
        return str(entry[0].transitions.state) if entry is not None else None

    async def offline(self, client_id: str) -> None:
        """Until the broker has noticed that `client_id`'s connection is gone (its Will and offline queue apply)."""
        await self.until(lambda: self.session_state(client_id) != "connected", what=f"{client_id} offline")

    def mqtt(self, client_id: str, username: str | None = None, password: str | None = None,
             clean: bool = True, **kw: Any) -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", self.server.mqtt_port, identifier=client_id, username=username,
                              password=password, clean_session=clean, **kw)

    async def start_call(self, device_id: str = "1", **body: Any) -> dict[str, Any]:
        status, resp = await self.post("/api/mqtt/call", {"device_id": device_id, **body})
        assert status == 200, resp
        return resp["data"]
