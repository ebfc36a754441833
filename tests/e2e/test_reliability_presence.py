"""A party disappearing mid-call: grace period, reconnect, client-id takeover, device status."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.raw_mqtt import Raw

GRACE = 0.6


async def raw_connect(port: int, client_id: str) -> Raw:
    """An MQTT connection we can kill with a TCP reset (`abort()`), like a phone leaving Wi-Fi."""
    raw = await Raw.connected(port, client_id)
    assert raw.session_present is False
    return raw


@pytest.fixture
async def h(make_harness):
    return await make_harness(calls={"party_offline_grace_s": GRACE})


async def _connected_call(h, party) -> tuple[str, object]:
    dev = await party("device", "1")
    call = await h.start_call("1")
    status, _ = await h.post("/api/mqtt/controller/resident",
                             {"call_info": {"call_id": call["call_id"], "action": "answered"}, "resident_id": "2"})
    assert status == 200
    return call["call_id"], dev


async def _status(h, call_id: str) -> dict:
    status, resp = await h.get(f"/api/mqtt/session?call_id={call_id}")
    assert status == 200
    return resp["data"]


@pytest.fixture
async def hparty(h):
    """`party` bound to the short-grace harness."""
    from tests.support.inbox import parties

    async with parties(h) as connect:
        yield connect


async def test_answering_resident_dropping_ends_call_and_tells_device(h, hparty):
    """The answerer's TCP connection resets; after the grace period the call ends and the device is told."""
    w = await raw_connect(h.server.mqtt_port, "resident-2")
    call_id, dev = await _connected_call(h, hparty)
    w.abort()
    _, body = await dev.wait_for(lambda t, b: t.endswith("/calls/control") and b.get("origin") == "server"
                                 and b["call_info"].get("reason") == "party_offline", timeout=GRACE + 3)
    assert body["call_info"]["call_id"] == call_id
    assert body["call_info"]["action"] == "hangup"
    data = await _status(h, call_id)
    assert data["status"] == "ended"
    assert data["end_reason"] == "party_offline"


async def test_device_dropping_ends_call_and_tells_resident(h, hparty):
    """The door station's connection resets mid-call; the answering resident hears party_offline."""
    r2 = await hparty("resident", "2")
    w = await raw_connect(h.server.mqtt_port, "device-1")
    call = await h.start_call("1")
    await h.post("/api/mqtt/controller/resident",
                 {"call_info": {"call_id": call["call_id"], "action": "answered"}, "resident_id": "2"})
    w.abort()
    _, body = await r2.wait_for(lambda t, b: t.endswith("/calls/control")
                                and b["call_info"].get("reason") == "party_offline", timeout=GRACE + 3)
    assert body["call_info"]["call_id"] == call["call_id"]
    assert (await _status(h, call["call_id"]))["end_reason"] == "party_offline"


async def test_reconnect_within_grace_keeps_the_call(h, hparty):
    """A resident that drops and comes back inside the grace period keeps its connected call."""
    w = await raw_connect(h.server.mqtt_port, "resident-2")
    call_id, _ = await _connected_call(h, hparty)
    w.abort()
    await asyncio.sleep(GRACE / 3)
    w2 = await raw_connect(h.server.mqtt_port, "resident-2")
    await asyncio.sleep(GRACE * 2)
    assert (await _status(h, call_id))["status"] == "connected"
    assert h.server.presence.pending == 0
    await w2.close()


async def test_client_id_takeover_is_not_an_offline(h, hparty):
    """A second connection with the same client id replaces the first without ending the call."""
    w1 = await raw_connect(h.server.mqtt_port, "resident-2")
    call_id, _ = await _connected_call(h, hparty)
    w2 = await raw_connect(h.server.mqtt_port, "resident-2")  # the phone roamed: same id, new socket
    await asyncio.sleep(GRACE * 2)
    assert (await _status(h, call_id))["status"] == "connected"
    w2.abort()
    await asyncio.sleep(GRACE * 2 + 0.5)
    assert (await _status(h, call_id))["end_reason"] == "party_offline"
    await w1.close()


async def test_ringing_resident_dropping_does_not_end_the_call(h, hparty):
    """Only the device or the answerer can end a call by going offline; a ringing phone cannot."""
    await hparty("device", "1")
    w = await raw_connect(h.server.mqtt_port, "resident-3")
    call = await h.start_call("1")
    w.abort()
    await asyncio.sleep(GRACE * 2)
    assert (await _status(h, call["call_id"]))["status"] == "ringing"


async def test_device_status_follows_abrupt_disconnects(h, hparty):
    """The retained status flips online false on a TCP reset and back to true on reconnect."""
    await h.post("/api/mqtt/device/status", {"device_id": "1", "online": True, "battery": 70})
    w = await raw_connect(h.server.mqtt_port, "device-1")
    watcher = h.mqtt("resident-9")
    seen: list[bool] = []
    async with watcher:
        await watcher.subscribe("devices/1/status", qos=1)
        await asyncio.sleep(0.2)
        w.abort()
        await h.offline("device-1")
        w2 = await raw_connect(h.server.mqtt_port, "device-1")
        try:
            async with asyncio.timeout(1.5):
                async for msg in watcher.messages:
                    seen.append(json.loads(msg.payload)["online"])  # type: ignore[arg-type]
        except TimeoutError:
            pass
        await w2.close()
    assert seen[-2:] == [False, True]
    status, resp = await h.get("/api/devices/1/status")
    assert status == 200
    assert resp["data"]["battery"] == 70
