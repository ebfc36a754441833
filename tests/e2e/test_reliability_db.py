"""A database that refuses writes: a 500 envelope, no partial state, and the server keeps working after."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.waits import quiet


def refuse_writes(h, on: bool) -> None:
    """Flip the real sqlite connection read-only (what a full or read-only disk looks like to a writer)."""
    h.svc.store.db.execute(f"PRAGMA query_only = {1 if on else 0}")


async def test_call_start_fails_cleanly_when_the_database_refuses(harness, party):
    """POST /api/mqtt/call gets a 500 envelope; no call is kept, stored or announced; later calls work."""
    r2 = await party("resident", "2")
    refuse_writes(harness, True)
    status, resp = await harness.post("/api/mqtt/call", {"device_id": "1"})
    assert status == 500
    assert resp["code"] == 500
    assert resp["data"] is None
    assert "database" in resp["message"]
    assert harness.svc.calls.active_count == 0
    assert (await harness.get("/healthz"))[0] == 200
    refuse_writes(harness, False)
    _, hist = await harness.get("/api/calls?device_id=1")
    assert hist["data"] == []
    await quiet(0.2)  # no invite for the call that was not kept
    assert not [m for m in r2.messages if m[0].endswith("/calls/incoming")]
    call = await harness.start_call("1")  # same device, not "busy": nothing was half-kept
    _, body = await r2.wait_for(lambda t, b: t.endswith("/calls/incoming"))
    assert body["call_id"] == call["call_id"]


async def test_failed_answer_leaves_the_call_ringing(harness, party):
    """An answer the database cannot record is refused with 500; the call stays ringing and can be answered."""
    dev = await party("device", "1")
    call = await harness.start_call("1")
    answer = {"call_info": {"call_id": call["call_id"], "action": "answered"}, "resident_id": "2"}
    refuse_writes(harness, True)
    status, resp = await harness.post("/api/mqtt/controller/resident", answer)
    assert status == 500
    assert resp["code"] == 500
    refuse_writes(harness, False)
    _, session = await harness.get(f"/api/mqtt/session?call_id={call['call_id']}")
    assert session["data"]["status"] == "ringing"
    assert session["data"]["resident_id"] is None
    assert not dev.server_msgs("/calls/control")  # nobody was told of a state that was not stored
    assert (await harness.post("/api/mqtt/controller/resident", answer))[0] == 200
    _, body = await dev.wait_for(lambda t, b: t.endswith("/calls/control") and b.get("origin") == "server")
    assert body["call_info"]["action"] == "answered"


@pytest.mark.parametrize("ring", [0.3])
async def test_ring_timeout_during_outage_is_retried(make_harness, ring):
    """A ring deadline that falls while writes fail is retried, and the call ends `timeout` once they work."""
    h = await make_harness(calls={"ring_timeout_s": ring})
    call = await h.start_call("1")
    refuse_writes(h, True)
    await asyncio.sleep(ring + 0.5)
    assert h.svc.calls.active_count == 1  # still live, its timer re-armed: not lost, not half-ended
    refuse_writes(h, False)
    await asyncio.sleep(1.5)
    _, session = await h.get(f"/api/mqtt/session?call_id={call['call_id']}")
    assert session["data"]["status"] == "ended"
    assert session["data"]["end_reason"] == "timeout"
    events = [e["action"] for e in h.svc.store.call_events(call["call_id"])]
    assert events == ["initiated", "ring_timeout"]
