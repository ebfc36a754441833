"""Visitor snapshots: a door station attaches a JPEG to its call; the call's parties and admins fetch it."""

from __future__ import annotations

import time

from tests.support.doors import JPEG
from tests.support.harness import ADMIN
from tests.support.inbox import Inbox
from tests.support.security import login, secure_harness


async def upload(h, call_id, data, token=None, content_type="image/jpeg", query=""):
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with h.http.post(f"{h.base}/api/calls/{call_id}/snapshot{query}", data=data, headers=headers) as r:
        return r.status, await r.json()


async def fetch(h, call_id, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with h.http.get(f"{h.base}/api/calls/{call_id}/snapshot", headers=headers) as r:
        return r.status, r.headers.get("Content-Type"), await r.read()


async def test_snapshot_reaches_residents_and_only_parties_may_read_it(make_harness):
    """Device 1 uploads a JPEG while ringing: residents 2 and 3 get a `snapshot` control message with its URL;
    they, the device and the admin can GET it, household 102 and device 5 cannot; history lists it."""
    h, t = await secure_harness(make_harness)
    async with h.mqtt(**login(t, "resident-2")) as r2, h.mqtt(**login(t, "resident-3")) as r3:
        inboxes = []
        for client, rid in ((r2, "2"), (r3, "3")):
            await client.subscribe(f"users/{rid}/#", qos=1)
            inboxes.append(Inbox(client))
        call_id = (await h.post("/api/mqtt/call", {"device_id": "1"}, t["device-1"]))[1]["data"]["call_id"]
        status, resp = await upload(h, call_id, JPEG, t["device-1"])
        assert status == 200, resp
        url = f"/api/calls/{call_id}/snapshot"
        assert resp["data"] == {"call_id": call_id, "snapshot_url": url, "bytes": len(JPEG)}
        for inbox in inboxes:
            _, body = await inbox.wait_for(lambda tp, b: b.get("call_info", {}).get("action") == "snapshot")
            assert body["snapshot_url"] == url
            assert body["call_info"]["call_id"] == call_id
            await inbox.close()
    for who in ("resident-2", "resident-3", "device-1"):
        status, ctype, data = await fetch(h, call_id, t[who])
        assert (status, ctype, data) == (200, "image/jpeg", JPEG), who
    assert (await fetch(h, call_id, ADMIN))[0] == 200
    for who in ("resident-4", "device-5"):
        assert (await fetch(h, call_id, t[who]))[0] == 403, who
    assert (await fetch(h, call_id))[0] == 401
    status, resp = await h.get("/api/calls?device_id=1", ADMIN)
    assert resp["data"][0]["snapshot_url"] == url
    files = list((h.server.settings.server.data_dir / "snapshots").rglob("*.jpg"))
    assert len(files) == 1
    assert files[0].read_bytes() == JPEG


async def test_only_the_calls_own_device_may_upload(make_harness):
    """Device 5 and resident 2 may not attach a snapshot to device 1's call; nothing is stored."""
    h, t = await secure_harness(make_harness)
    call_id = (await h.post("/api/mqtt/call", {"device_id": "1"}, t["device-1"]))[1]["data"]["call_id"]
    for who in ("device-5", "resident-2"):
        status, resp = await upload(h, call_id, JPEG, t[who])
        assert status == 403, (who, resp)
    assert (await fetch(h, call_id, ADMIN))[0] == 404


async def test_bad_snapshots_are_refused(harness):
    """Not a JPEG, empty, over `snapshots.max_bytes`, unknown call, ended call, wrong anonymous device: each
    refused with its status; a valid upload afterwards still works."""
    call_id = (await harness.start_call())["call_id"]
    status, resp = await upload(harness, call_id, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    assert status == 400
    assert resp["data"] == {"reason": "not_jpeg"}
    status, resp = await upload(harness, call_id, JPEG[:-2] + b"xx")
    assert status == 400
    assert resp["data"] == {"reason": "not_jpeg"}
    assert (await upload(harness, call_id, b""))[0] == 400
    big = JPEG[:-2] + b"\x00" * 600_000 + b"\xff\xd9"
    status, resp = await upload(harness, call_id, big)
    assert status == 413
    assert "snapshots.max_bytes" in resp["message"]
    assert (await upload(harness, "call-nope", JPEG))[0] == 404
    assert (await upload(harness, "x" * 65, JPEG))[0] == 400
    status, _ = await upload(harness, call_id, JPEG, query="?device_id=5")
    assert status == 403
    assert (await fetch(harness, call_id))[0] == 404
    status, resp = await upload(harness, call_id, JPEG)
    assert status == 200
    await harness.post("/api/mqtt/controller/device", {"call_info": {"call_id": call_id, "action": "cancelled"}})
    status, resp = await upload(harness, call_id, JPEG)
    assert status == 409
    assert resp["data"] == {"reason": "call_ended"}


async def test_small_max_bytes_setting(make_harness):
    """`snapshots.max_bytes` is the limit: one byte over is 413 with reason `too_large`."""
    h = await make_harness(snapshots={"max_bytes": 2048})
    call_id = (await h.start_call())["call_id"]
    ok_jpeg = JPEG[:-2] + b"\x00" * (2048 - len(JPEG)) + b"\xff\xd9"
    assert (await upload(h, call_id, ok_jpeg))[0] == 200
    status, resp = await upload(h, call_id, ok_jpeg[:-2] + b"\x00\xff\xd9")
    assert status == 413
    assert resp["data"] == {"reason": "too_large"}


async def test_snapshots_are_pruned_after_retention(make_harness):
    """A snapshot older than `snapshots.retention_days` is deleted: file gone, GET 404, history without URL."""
    h = await make_harness(snapshots={"retention_days": 1})
    call_id = (await h.start_call())["call_id"]
    assert (await upload(h, call_id, JPEG))[0] == 200
    assert h.svc.snapshots.prune(time.time() + 3600) == 0
    assert (await fetch(h, call_id))[0] == 200
    assert h.svc.snapshots.prune(time.time() + 86400 + 60) == 1
    assert (await fetch(h, call_id))[0] == 404
    assert list((h.server.settings.server.data_dir / "snapshots").rglob("*.jpg")) == []
    _status, resp = await h.get("/api/calls?device_id=1")
    assert resp["data"][0]["snapshot_url"] is None


def test_incoming_message_carries_the_snapshot_only_when_there_is_one():
    """`IncomingCall` omits `snapshot_url` when absent (the seed's bytes unchanged) and carries it when set."""
    from broker.core.wire.calls import IncomingCall

    base = {"call_id": "c", "device_id": "1", "household_number": "101", "call_info": {"action": "initiated"},
            "tencen_rtc": {"sdk_app_id": 1, "user_id": "resident_2", "user_sig": "s", "room_id": "c"},
            "ring_timeout_s": 30.0, "timestamp": 1}
    assert "snapshot_url" not in IncomingCall.model_validate(base).model_dump_json()
    with_snap = IncomingCall.model_validate({**base, "snapshot_url": "/api/calls/c/snapshot"})
    assert with_snap.model_dump()["snapshot_url"] == "/api/calls/c/snapshot"
