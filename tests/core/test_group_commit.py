"""Group commit: the real call service on a real sqlite file; every message is checked against committed data.

The publisher below reads the database through a second connection, which sees committed rows only, at
the moment each message is published: persist-then-notify holds if every announced transition is there.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker.config import CallsConfig, SiteConfig
from broker.core.calls import CallService
from broker.core.directory import Directory
from broker.core.states import Party, Role
from broker.core.status import StatusService
from broker.core.store import Store, StoreError
from broker.core.trtc import Trtc, verify_user_sig
from broker.core.wire.calls import ControlMessage, IncomingCall
from broker.core.wire.status import DeviceStatus

KEY = "test-trtc-secret"
HOUSE = "楼 \"A\"\\1"  # escaping and non-ASCII must encode exactly as pydantic does


class CommittedView:
    """A Publisher that records each message with what is *committed* for its call when it is sent."""

    def __init__(self, db_path: Path) -> None:
        self.db = sqlite3.connect(db_path)
        self.sent: list[dict[str, Any]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, meta: Any = None) -> None:
        body = json.loads(payload)
        call_id = body.get("call_id") or (body.get("call_info") or {}).get("call_id")
        events = [r[0] for r in self.db.execute(
            "SELECT action FROM call_events WHERE call_id = ? ORDER BY id", (call_id,))]
        self.sent.append({"topic": topic, "payload": payload, "body": body, "committed": events})


@pytest.fixture
async def svc(tmp_path: Path) -> Any:
    store = Store(tmp_path / "intercom.db")
    directory = Directory(store, 1000, None)
    directory.seed_site(SiteConfig.model_validate({"households": [
        {"household_number": HOUSE, "residents": [{"resident_id": "2"}, {"resident_id": "居民3"}],
         "devices": [{"device_id": "1"}]},
        {"household_number": "102", "residents": [{"resident_id": "4"}], "devices": [{"device_id": "5"}]},
    ]}))
    pub = CommittedView(tmp_path / "intercom.db")
    calls = CallService(store, directory, Trtc(1400000001, KEY, 86400), CallsConfig(), pub)
    yield calls, pub, StatusService(store, directory, pub)
    calls.close()
    store.close()
    pub.db.close()


def announced(msg: dict[str, Any]) -> str:
    return "initiated" if msg["topic"].endswith("/incoming") else msg["body"]["call_info"]["action"]


async def test_messages_leave_only_after_their_transition_is_committed(svc):
    calls, pub, _ = svc
    data = calls.start_call("1")
    call_id = data["call_id"]
    assert pub.sent == []  # staged, not committed: nobody told yet
    await asyncio.sleep(0)  # the loop tick that commits the group
    assert [m["topic"] for m in pub.sent] == ["users/2/calls/incoming", "users/居民3/calls/incoming"]
    # answer and hang up in one tick: one group, one commit, then both transitions' messages in order
    calls.act(Party(Role.RESIDENT, "2"), _info(call_id, "answered"))
    calls.act(Party(Role.DEVICE, "1"), _info(call_id, "hangup"))
    assert len(pub.sent) == 2
    commits = calls.journal.commits
    await asyncio.sleep(0)
    assert calls.journal.commits == commits + 1
    assert [(m["topic"], announced(m)) for m in pub.sent[2:]] == [
        ("devices/1/calls/control", "answered"), ("users/居民3/calls/control", "cancelled"),
        ("users/2/calls/control", "cancelled"), ("users/2/calls/control", "hangup")]
    # what a second connection saw at the moment of each publish: the announced transitions, committed
    assert [m["committed"] for m in pub.sent] == [["initiated"]] * 2 + [["initiated", "answered", "hangup"]] * 4
    assert calls.store.get_call(call_id)["status"] == "ended"
    await calls.durable()  # nothing pending: returns at once


async def test_server_payloads_are_byte_for_byte_the_pydantic_models(svc):
    calls, pub, _ = svc
    data = calls.start_call("1", timestamp=1651234567890)
    calls.act(Party(Role.DEVICE, "1"), _info(data["call_id"], "cancelled", reason="user_cancelled"))
    await asyncio.sleep(0)
    incoming = [m for m in pub.sent if m["topic"].endswith("/incoming")]
    assert len(incoming) == 2
    for m in incoming:
        assert IncomingCall.model_validate(m["body"]).model_dump_json().encode() == m["payload"]
        rtc = m["body"]["tencen_rtc"]
        assert verify_user_sig(rtc["user_sig"], KEY).identifier == rtc["user_id"]
        assert m["body"]["household_number"] == HOUSE
    controls = [m for m in pub.sent if m["topic"].endswith("/control")]
    assert len(controls) == 2
    for m in controls:
        assert ControlMessage.model_validate(m["body"]).model_dump_json(exclude_none=True).encode() == m["payload"]
        assert m["body"]["call_info"]["reason"] == "user_cancelled"
        assert "resident_id" not in m["body"]


async def test_a_failed_commit_undoes_the_whole_group_and_tells_nobody(svc):
    """A commit-time failure (a deferred foreign key, checked only at COMMIT) in a group of transitions."""
    calls, pub, _ = svc
    conn = calls.store.db.conn
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript("CREATE TABLE parent (id INTEGER PRIMARY KEY);"
                       "CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);")
    first = calls.start_call("1")["call_id"]
    await asyncio.sleep(0)
    sent_before = len(pub.sent)
    failures: list[str] = []
    started: list[str] = []

    async def handler() -> None:
        # One tick, as a REST handler would: cancel the ringing call, start another one, and a write that
        # passes when staged but fails at COMMIT; then wait for durability.
        calls.act(Party(Role.DEVICE, "1"), _info(first, "cancelled"))
        started.append(calls.start_call("5")["call_id"])
        calls.journal.on_failure(lambda: failures.append("told"))
        calls.journal.stage(lambda c: c.execute("INSERT INTO child VALUES (42)"), lambda: None)
        await calls.durable()

    with pytest.raises(StoreError, match="FOREIGN KEY"):
        await handler()
    second = started[0]
    assert failures == ["told"]
    assert len(pub.sent) == sent_before  # no message of the failed group left
    # memory is back where the database is: the first call rings on, with its timer; the second never was
    assert calls.active_count == 1
    assert calls._active[first].state.value == "ringing"
    assert first in calls._timers
    assert second not in calls._timers
    assert calls.store.get_call(second) is None
    assert [e["action"] for e in calls.store.call_events(first)] == ["initiated"]
    with pytest.raises(Exception, match="already in call"):
        calls.start_call("1")  # the device is busy with the first call again
    # with the poison gone the same moves work and are announced after their commit
    conn.execute("DELETE FROM child")
    conn.commit()
    calls.act(Party(Role.DEVICE, "1"), _info(first, "cancelled"))
    await asyncio.sleep(0)
    calls_told = [m for m in pub.sent[sent_before:] if not m["topic"].endswith("/missed")]
    assert [announced(m) for m in calls_told] == ["cancelled", "cancelled"]
    assert all(m["committed"] == ["initiated", "cancelled"] for m in calls_told)
    # each resident's missed-call counter follows the committed call messages
    assert [(m["topic"], m["body"]["unseen"]) for m in pub.sent[sent_before + 2:]] == [
        ("users/2/calls/missed", 1), ("users/居民3/calls/missed", 1)]
    assert calls.active_count == 0


async def test_another_write_commits_the_open_group_first(svc):
    """A status write during an open group neither joins nor rolls it back: the group commits and speaks first."""
    calls, pub, status = svc
    calls.start_call("1")
    status.update(DeviceStatus(device_id="1", online=True, battery=50))
    assert [m["topic"] for m in pub.sent] == ["users/2/calls/incoming", "users/居民3/calls/incoming",
                                               "devices/1/status"]
    assert all(m["committed"] == ["initiated"] for m in pub.sent[:2])
    assert not calls.journal.pending


async def test_a_write_refused_at_once_keeps_the_rest_of_the_group(svc):
    """A transition whose statement fails is refused alone; the others staged in the same tick still commit."""
    calls, pub, _ = svc
    first = calls.start_call("1")["call_id"]
    calls.store.db.execute("PRAGMA query_only = 1")
    with pytest.raises(StoreError):
        calls.start_call("5")
    calls.store.db.execute("PRAGMA query_only = 0")
    assert calls.active_count == 1
    await asyncio.sleep(0)
    assert [m["body"]["call_id"] for m in pub.sent] == [first, first]
    assert calls.store.get_call(first)["status"] == "ringing"


def _info(call_id: str, action: str, reason: str | None = None) -> Any:
    from broker.core.wire.calls import CallInfo

    return CallInfo(call_id=call_id, action=action, reason=reason)


async def test_a_write_that_raises_midway_leaves_no_trace(svc):
    """A step that fails after writing (here a bug, not sqlite) has its statements taken back; the group goes on."""
    calls, pub, _ = svc
    first = calls.start_call("1")["call_id"]

    def half_written(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO call_events (call_id, ts, actor, action) VALUES ('ghost', 0, 'x', 'y')")
        raise ValueError("bug after the first statement")

    with pytest.raises(ValueError, match="bug"):
        calls.journal.stage(half_written, lambda: None)
    await asyncio.sleep(0)
    assert calls.store.call_events("ghost") == []
    assert [e["action"] for e in calls.store.call_events(first)] == ["initiated"]
    assert [m["committed"] for m in pub.sent] == [["initiated"]] * 2


async def test_a_request_is_acknowledged_only_after_its_transition_commits(svc):
    """`after` (the PUBACK barrier of MQTT call requests) runs once the group ended: after the commit and
    its messages, or after a failed commit's undo and error replies; at once when nothing is open."""
    calls, pub, _ = svc
    seen: list[Any] = []
    calls.journal.after(lambda: seen.append("at once"))
    assert seen == ["at once"]
    call_id = calls.start_call("1")["call_id"]

    def ack() -> None:
        committed = [r[0] for r in pub.db.execute("SELECT action FROM call_events WHERE call_id = ?", (call_id,))]
        seen.append(("ack", committed, len(pub.sent)))

    calls.journal.after(ack)
    assert len(seen) == 1  # the group is open: not yet
    await asyncio.sleep(0)
    assert seen[1] == ("ack", ["initiated"], 2)  # committed, both residents' incoming already sent

    conn = calls.store.db.conn
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript("CREATE TABLE parent (id INTEGER PRIMARY KEY);"
                       "CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);")
    calls.journal.stage(lambda c: c.execute("INSERT INTO child VALUES (42)"), lambda: seen.append("undone"))
    calls.journal.on_failure(lambda: seen.append("error reply"))
    calls.journal.after(lambda: seen.append("ack after failure"))
    await asyncio.sleep(0)
    assert seen[2:] == ["undone", "error reply", "ack after failure"]
