"""Every async test here runs on both event loops (`LOOPS` in tests/conftest.py); the bridge tests' broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LOOPS
from tests.mosquitto_helpers import Mosquitto


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Callable[[], Any]]:
    return LOOPS


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    """A Mosquitto of the test's own on a free loopback port (stopped at the end; a test may restart it)."""
    mosq = Mosquitto(tmp_path)
    await mosq.start()
    yield mosq
    mosq.stop()
