"""The typed call responses are the JSON the core returns: every key, in order, of the declared types."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from broker.config import CallsConfig, SiteConfig
from broker.core.calls import CallService
from broker.core.directory import Directory
from broker.core.group_commit import Meta
from broker.core.states import Party, Role
from broker.core.store import Store
from broker.core.trtc import Trtc
from broker.core.wire.call_views import CallStarted, CallStatusView, HistoryRow, SessionView


class Discard:
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, meta: Meta | None = None) -> None:
        """The publishes are not what these tests look at."""


@pytest.fixture
def calls(tmp_path: Path) -> Iterator[CallService]:
    store = Store(tmp_path / "intercom.db")
    directory = Directory(store, 1000, None)
    directory.seed_site(SiteConfig.model_validate({"households": [
        {"household_number": "101", "residents": [{"resident_id": "2"}, {"resident_id": "3"}],
         "devices": [{"device_id": "1"}]}]}))
    service = CallService(store, directory, Trtc(1400000001, "test-trtc-secret", 86400), CallsConfig(), Discard())
    yield service
    service.close()
    store.close()


def _is(view: Any, data: Any) -> None:
    """`data` has exactly `view`'s keys, in its declared order, with values of its declared types."""
    keys = [k for k in view.__annotations__ if k in view.__required_keys__ or k in data]
    assert list(data) == keys
    TypeAdapter(view).validate_python(data, strict=True)


async def test_the_start_reply_is_a_call_started(calls: CallService) -> None:
    """`start_call`'s reply (REST and `calls/request`) is CallStarted, its optional DND key left out."""
    started = calls.start_call("1", timestamp=1651234567890)
    _is(CallStarted, started)
    assert "dnd_resident_ids" not in started
    assert started["tencen_rtc"]["user_id"] == "device_1"


async def test_the_session_and_active_views(calls: CallService) -> None:
    """The session view and the active list (the `call_status` answer's `calls`) are the declared views."""
    call_id = calls.start_call("1")["call_id"]
    resident = Party(Role.RESIDENT, "2")
    _is(SessionView, calls.session(call_id, resident))
    active = calls.active_for(resident)
    assert [c["call_id"] for c in active] == [call_id]
    _is(SessionView, active[0])
    _is(CallStatusView, {"resident_id": "2", "calls": active})


async def test_a_history_row(calls: CallService) -> None:
    """`GET /api/calls` rows are HistoryRow."""
    calls.start_call("1")
    await calls.durable()
    rows = calls.history({}, 10)
    assert len(rows) == 1
    _is(HistoryRow, rows[0])
