"""Missed calls and per-resident history, end to end."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.harness import ADMIN
from tests.support.inbox import parties
from tests.support.waits import quiet


def is_missed(unseen: int):
    return lambda t, b: t.endswith("/calls/missed") and b.get("unseen") == unseen


async def test_unanswered_call_is_missed_by_each_target(make_harness):
    """A ring-out is missed by both residents: history, the retained counter, then seen drops it to 0."""
    h = await make_harness(calls={"ring_timeout_s": 0.3})
    async with parties(h) as connect:
        r2 = await connect("resident", "2")
        call_id = (await h.start_call("1"))["call_id"]
        _, body = await r2.wait_for(is_missed(1))
        assert body == {"origin": "server", "unseen": 1, "last_call_id": call_id}
        status, resp = await h.get("/api/residents/2/calls?missed=true")
        assert status == 200
        assert [e["call_id"] for e in resp["data"]] == [call_id]
        e = resp["data"][0]
        assert e["outcome"] == "missed"
        assert e["missed"] is True
        assert e["seen"] is False
        assert e["end_reason"] == "timeout"
        assert e["answered_by"] is None
        assert e["talk_duration_s"] == 0.0
        assert 0.2 <= e["ring_duration_s"] <= 2.0
        # a client connecting later gets the retained counter
        late = await connect("resident", "3", topics=["users/3/calls/missed"])
        _, body = await late.wait_for(is_missed(1))
        assert body["last_call_id"] == call_id
        status, resp = await h.post("/api/residents/2/calls/seen", {})
        assert status == 200
        assert resp["data"] == {"unseen": 0, "last_call_id": call_id}
        await r2.wait_for(is_missed(0))
        _, resp = await h.get("/api/residents/2/calls?missed=true")
        assert resp["data"][0]["seen"] is True
        assert h.svc.calls.resident_calls.missed("3")["unseen"] == 1  # resident 3's are its own


async def test_answered_call_is_nobodys_missed_call(harness, party):
    """Answered: the answerer's entry has who, which client, ring and talk time; the other's: answered_elsewhere."""
    r3 = await party("resident", "3")
    call_id = (await harness.start_call("1"))["call_id"]
    assert (await harness.post("/api/mqtt/controller/resident", {
        "resident_id": "2", "client_id": "resident-2/phone",
        "call_info": {"call_id": call_id, "action": "answered"}}))[0] == 200
    await asyncio.sleep(0.3)  # the clock: some talk time
    assert (await harness.post("/api/mqtt/controller/device", {"call_info": {"call_id": call_id,
                                                                             "action": "hangup"}}))[0] == 200
    _, resp = await harness.get("/api/residents/2/calls")
    e = resp["data"][0]
    assert e["call_id"] == call_id
    assert e["outcome"] == "answered"
    assert e["missed"] is False
    assert e["answered_by"] == "2"
    assert e["answered_client_id"] == "resident-2/phone"
    assert e["end_reason"] == "hangup"
    assert e["talk_duration_s"] >= 0.2
    assert e["ring_duration_s"] >= 0
    assert e["connected_at"] is not None
    _, resp = await harness.get("/api/residents/3/calls")
    assert resp["data"][0]["outcome"] == "answered_elsewhere"
    assert (await harness.get("/api/residents/3/calls?missed=true"))[1]["data"] == []
    await quiet(0.1)  # no missed-call count for resident 3
    assert not r3.server_msgs("/calls/missed")


async def test_a_decline_is_not_missed_a_cancel_is(harness, party):
    """Resident 2 rejects, then the device cancels: missed for 3 only (2 declined it)."""
    r2 = await party("resident", "2")
    call_id = (await harness.start_call("1"))["call_id"]
    await harness.post("/api/mqtt/controller/resident", {"resident_id": "2", "call_info": {
        "call_id": call_id, "action": "rejected"}})
    await harness.post("/api/mqtt/controller/device", {"call_info": {"call_id": call_id, "action": "cancelled"}})
    _, resp = await harness.get("/api/residents/2/calls")
    assert resp["data"][0]["outcome"] == "declined"
    _, resp = await harness.get("/api/residents/3/calls?missed=true")
    assert resp["data"][0]["call_id"] == call_id
    assert resp["data"][0]["end_reason"] == "cancelled"
    await quiet(0.1)  # no missed-call count for resident 2
    assert not r2.server_msgs("/calls/missed")


async def test_a_dnd_call_is_missed(harness, party):
    """A call refused because everyone is in DND is missed by each of them."""
    r3 = await party("resident", "3")
    async with harness.http.put(harness.base + "/api/households/101/dnd", json={"enabled": True}) as r:
        assert r.status == 200
    assert (await harness.post("/api/mqtt/call", {"device_id": "1"}))[0] == 409
    _, body = await r3.wait_for(is_missed(1))
    _, resp = await harness.get("/api/residents/3/calls?missed=true")
    assert resp["data"][0]["call_id"] == body["last_call_id"]
    assert resp["data"][0]["end_reason"] == "dnd"


async def test_history_permissions(harness):
    """A resident reads only its own history and marks only its own calls seen; devices neither; admin both."""
    t2, t3, d1 = (await harness.token("residents", "2"), await harness.token("residents", "3"),
                  await harness.token("devices", "1"))
    assert (await harness.get("/api/residents/2/calls", token=t2))[0] == 200
    assert (await harness.post("/api/residents/2/calls/seen", {}, token=t2))[0] == 200
    for tok in (t3, d1):
        status, resp = await harness.get("/api/residents/2/calls", token=tok)
        assert status == 403
        assert resp["message"].startswith("禁止访问: ")
        assert (await harness.post("/api/residents/2/calls/seen", {}, token=tok))[0] == 403
    assert (await harness.get("/api/residents/2/calls", token=ADMIN))[0] == 200


@pytest.mark.parametrize(("path", "status", "detail"), [
    ("/api/residents/2/calls?missed=maybe", 400, "无效的请求参数: missed: "),
    ("/api/residents/2/calls?limit=0", 400, "无效的请求参数: limit: "),
    ("/api/residents/2/calls?limit=-3", 400, "无效的请求参数: limit: "),
    ("/api/residents/nobody/calls", 404, "资源不存在: resident 'nobody' not found"),
    ("/api/residents/" + "x" * 65 + "/calls", 400, "无效的请求参数: resident_id: "),
])
async def test_history_bad_inputs(harness, path, status, detail):
    """Bad query values and ids are 400 naming the field; an unknown resident is 404."""
    got, resp = await harness.get(path)
    assert got == status, resp
    assert resp["message"].startswith(detail), resp


async def test_a_resident_marks_its_missed_calls_seen_over_mqtt(make_harness):
    """`{"command":"calls_seen"}` on users/{id}/commands drops the retained missed counter to 0, as the POST does."""
    import json

    h = await make_harness(calls={"ring_timeout_s": 0.3})
    async with parties(h) as connect:
        r2 = await connect("resident", "2")
        await h.start_call("1")
        await r2.wait_for(is_missed(1))
        await r2.client.publish("users/2/commands", json.dumps({"command": "calls_seen", "request_id": "s1"}), qos=1)
        _, body = await r2.wait_for(is_missed(0))
        assert body["origin"] == "server"
        _, resp = await h.get("/api/residents/2/calls?missed=true")
        assert resp["data"][0]["seen"] is True
