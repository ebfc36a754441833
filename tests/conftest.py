"""Fixtures: the real server in-process on ephemeral ports, real MQTT clients, real HTTP, real sqlite.

The helpers behind them live in `tests/support/`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.config import Settings
from broker.server import IntercomServer
from tests.support.harness import Harness, make_settings
from tests.support.inbox import parties
from tests.support.tls import make_pki

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
# `@pytest.mark.asyncio(loop_factories=["uvloop"])`. A subprocess server follows the test's loop (support/process.py).
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop, "uvloop": _uvloop}


# Parallel runs (`pytest -n 2 --dist loadgroup`, pytest-xdist): a module's tests stay on one worker (its module
# fixtures are made once), and the modules that measure RSS, latency or descriptor limits share one group, so no two
# of them run at the same time and skew each other's numbers. SPLIT: modules of long, independent tests (Paho's
# suites, 40 s and 160 s, each against its own server), one group per test.
SPLIT = frozenset({"test_paho_suite.py"})
TIMING = frozenset({
    "test_accept_loop.py", "test_memory.py", "test_principal_quotas.py", "test_qos2_memory.py",
    "test_reader_fairness.py", "test_security_flood.py", "test_sessions_db_lock.py", "test_slow_http.py",
    "test_slow_reader.py",
})


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test old code: a compiled engine module (broker/native_build.py) whose .py was edited since."""
    from broker.native_build import status

    if refusal := status().refusal():
        pytest.exit(refusal, returncode=2)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            name = item.path.name
            group = "timing" if name in TIMING else item.nodeid if name in SPLIT else item.nodeid.split("::", 1)[0]
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="module", params=list(LOOPS))
def server_loop(request: pytest.FixtureRequest) -> str:
    """For a sync test's subprocess server (`ServerProcess(..., loop=server_loop)`): each loop in turn."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (the `fast` extra)")
    return str(request.param)


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
    """A throwaway CA, a server cert for 127.0.0.1 and a client cert (see tests/support/tls.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def harness(make_harness: Callable[..., Any]) -> Harness:
    return await make_harness()


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


@pytest.fixture(autouse=True)
def _shared_empty_inflight_stays_empty() -> Iterator[None]:
    """Every session starts with the one shared `NO_INFLIGHT` dict: a writer that forgot to replace it first
    would put one client's message in flight for all of them. Checked after every test."""
    from broker.mqtt.session import NO_INFLIGHT

    yield
    assert NO_INFLIGHT == {}, f"a message was written into the shared NO_INFLIGHT: {NO_INFLIGHT!r}"
