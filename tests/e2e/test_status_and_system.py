"""Device status (retained, presence-driven) and system messages."""

from __future__ import annotations

import asyncio
import json


async def test_status_is_stored_and_published_retained(harness):
    """POST /api/mqtt/device/status stores the status and a later subscriber gets it retained."""
    body = {"device_id": "1", "online": True, "battery": 85, "properties": {"firmware_version": "1.2.3"}}
    status, resp = await harness.post("/api/mqtt/device/status", body)
    assert status == 200
    assert resp["data"] is None
    status, resp = await harness.get("/api/devices/1/status")
    assert status == 200
    assert resp["data"]["battery"] == 85
    assert resp["data"]["properties"]["firmware_version"] == "1.2.3"
    async with harness.mqtt("resident-2") as c:
        await c.subscribe("devices/1/status", qos=1)
        async with asyncio.timeout(5):
            async for msg in c.messages:
                got = json.loads(msg.payload)
                assert msg.retain
                assert got["device_id"] == "1"
                assert got["battery"] == 85
                assert got["online"] is True
                assert got["origin"] == "server"
                assert got["updated_at"].endswith("Z")
                break


async def test_presence_flips_online_on_connect_and_drop(harness):
    """A device's connection opening and closing publishes online true/false, retained."""
    await harness.post("/api/mqtt/device/status", {"device_id": "1", "online": False, "battery": 50})
    async with harness.mqtt("observer") as obs:
        await obs.subscribe("devices/1/status", qos=1)
        seen = []

        async def collect():
            async for msg in obs.messages:
                seen.append(json.loads(msg.payload)["online"])
                if seen[-2:] == [True, False]:
                    return

        task = asyncio.create_task(collect())
        await harness.until(lambda: bool(seen), what="the retained status")
        async with harness.mqtt("device-1"):
            await harness.until(lambda: True in seen, what="online true")
        await asyncio.wait_for(task, 5)
    assert seen[-2:] == [True, False]
    _, resp = await harness.get("/api/devices/1/status")
    assert resp["data"]["online"] is False
    assert resp["data"]["battery"] == 50


async def test_device_published_status_is_stored(harness):
    """A device publishing its own status on devices/{id}/status is stored by the plugin."""
    async with harness.mqtt("device-1") as dev:
        await dev.publish("devices/1/status", json.dumps({"online": True, "battery": 12}), qos=1, retain=True)
        for _ in range(50):
            row = harness.svc.store.get_status("1")
            if row and row["battery"] == 12:
                break
            await asyncio.sleep(0.02)
    assert row is not None
    assert row["battery"] == 12


async def test_system_message_is_published(harness):
    """POST /api/mqtt/system/message publishes {type, level, message, data, timestamp} on system/{type}."""
    async with harness.mqtt("resident-2") as c:
        await c.subscribe("system/#", qos=1)
        body = {"type": "notification", "level": "warning", "message": "系统将于今晚22:00进行升级维护",
                "data": {"affected_services": ["video_call"]}, "timestamp": 1651234567890}
        status, _ = await harness.post("/api/mqtt/system/message", body)
        assert status == 200
        async with asyncio.timeout(5):
            async for msg in c.messages:
                assert str(msg.topic) == "system/notification"
                assert json.loads(msg.payload) == {"origin": "server", **body}
                break


async def test_usersig_and_rtc_token(harness):
    """The older TRTC endpoints return verifiable UserSigs for the asked identifier."""
    from broker.core.trtc import verify_user_sig

    status, resp = await harness.post("/api/trtc/usersig", {"user_id": "user123"})
    assert status == 200
    assert verify_user_sig(resp["data"]["user_sig"], "test-trtc-secret").identifier == "user123"
    status, resp = await harness.post("/api/rtc/token", {"user_id": "user456", "channel_id": "room123"})
    assert status == 200
    assert resp["data"]["room_id"] == "room123"
    info = verify_user_sig(resp["data"]["token"], "test-trtc-secret")
    assert info.identifier == "user456"
    assert info.expire_s == 86400
    assert info.sdk_app_id == 1400000001
