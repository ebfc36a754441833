"""Fixtures: the real server in-process on ephemeral ports, real MQTT clients, real HTTP, real sqlite."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
import yaml

from broker.config import Settings, load_settings
from broker.server import IntercomServer
from tests.tls_helpers import make_pki

ADMIN = "test-admin-token-0123456789abcdef"

# Vendored Eclipse Paho suite (unittest classes, run by tests/mqtt/test_paho_suite.py in a subprocess): not collected.
collect_ignore = ["paho_interop"]


def _uvloop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        pytest.skip("uvloop is not installed (the `fast` extra)")
    return uvloop.new_event_loop()


# The event loops the server must work on: the stock one and uvloop (the `fast` extra, which `python -m broker`
# uses when installed). tests/e2e and tests/mqtt run every async test on each (ids `asyncio`, `uvloop`) through
# pytest-asyncio's `pytest_asyncio_loop_factories` hook (their conftest.py); one test can pick its loops with
# `@pytest.mark.asyncio(loop_factories=["uvloop"])`. A subprocess server follows the test's loop (server_process.py).
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop, "uvloop": _uvloop}


@pytest.fixture(scope="module", params=list(LOOPS))
def server_loop(request: pytest.FixtureRequest) -> str:
    """For a sync test's subprocess server (`ServerProcess(..., loop=server_loop)`): each loop in turn."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (the `fast` extra)")
    return str(request.param)


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "mqtt_port": 0, "ws_port": 0, "http_port": 0, "data_dir": str(tmp_path)},
        "auth": {"pbkdf2_iterations": 1000},
        # a shared CI box stalls the loop for hundreds of ms now and then: load shedding on loop lag has its own
        # tests (tests/core/test_admission.py), elsewhere it would refuse calls a test needs
        "calls": {"max_loop_lag_ms": 10_000},
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
    """A running server plus helpers to talk to it."""

    def __init__(self, server: IntercomServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def svc(self) -> Any:
        return self.server.services

    async def post(self, path: str, body: Any, token: str | None = None, raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
        async with self.http.post(self.base + path, data=data, headers=headers) as r:
            return r.status, await r.json()

    async def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.get(self.base + path, headers=headers) as r:
            return r.status, await r.json()

    async def delete(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.delete(self.base + path, headers=headers) as r:
            return r.status, await r.json()

    def mqtt(self, client_id: str, username: str | None = None, password: str | None = None,
             clean: bool = True, **kw: Any) -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", self.server.mqtt_port, identifier=client_id, username=username,
                              password=password, clean_session=clean, **kw)

    async def start_call(self, device_id: str = "1", **body: Any) -> dict[str, Any]:
        status, resp = await self.post("/api/mqtt/call", {"device_id": device_id, **body})
        assert status == 200, resp
        return resp["data"]


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **sections: make_settings(tmp_path, **sections)


@pytest.fixture
async def make_harness(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    servers: list[IntercomServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def factory(settings: Settings | None = None, **sections: dict[str, Any]) -> Harness:
        server = IntercomServer(settings or make_settings(tmp_path, **sections))
        await server.start()
        servers.append(server)
        http = aiohttp.ClientSession()
        sessions.append(http)
        return Harness(server, http)

    yield factory
    for http in sessions:
        await http.close()
    for server in servers:
        await server.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server cert for 127.0.0.1 and a client cert (see tests/tls_helpers.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def harness(make_harness: Callable[..., Any]) -> Harness:
    return await make_harness()


class Inbox:
    """Collects JSON messages from one aiomqtt client, by topic."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[tuple[str, Any, bool]] = []
        self._event = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.client.messages:
            try:
                body = json.loads(msg.payload)  # type: ignore[arg-type]
            except ValueError:
                body = msg.payload
            self.messages.append((str(msg.topic), body, bool(msg.retain)))
            self._event.set()

    async def wait_for(self, pred: Callable[[str, Any], bool], timeout: float = 5.0) -> tuple[str, Any]:
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for topic, body, _ in self.messages[seen:]:
                    if pred(topic, body):
                        return topic, body
                seen = len(self.messages)
                self._event.clear()
                await self._event.wait()

    def server_msgs(self, topic_suffix: str = "") -> list[Any]:
        return [b for t, b, _ in self.messages
                if t.endswith(topic_suffix) and isinstance(b, dict) and b.get("origin") == "server"]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@contextlib.asynccontextmanager
async def parties(harness: Harness) -> AsyncIterator[Callable[..., Any]]:
    """Connect subscribed MQTT parties to `harness`: connect('resident', '2') -> Inbox; all closed on exit."""
    stack: list[tuple[aiomqtt.Client, Inbox]] = []

    async def connect(role: str, ident: str, topics: list[str] | None = None, **kw: Any) -> Inbox:
        client = harness.mqtt(f"{role}-{ident}", **kw)
        await client.__aenter__()
        for t in topics or ([f"users/{ident}/#"] if role == "resident" else [f"devices/{ident}/#"]):
            await client.subscribe(t, qos=1)
        inbox = Inbox(client)
        stack.append((client, inbox))
        return inbox

    try:
        yield connect
    finally:
        for client, inbox in reversed(stack):
            await inbox.close()
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


@pytest.fixture
async def party(harness: Harness) -> AsyncIterator[Callable[..., Any]]:
    """Connect a subscribed MQTT party: party('resident', '2') -> Inbox."""
    async with parties(harness) as connect:
        yield connect


@pytest.fixture(autouse=True)
def _fresh_log_throttles() -> None:
    """Log throttles are process state: a test (each on its own server) starts with none of them spent."""
    from broker.limiter import LogThrottle

    LogThrottle.forget_all()
