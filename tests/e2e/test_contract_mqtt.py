"""The seed contract over MQTT: retained status, grace timers, action words, Unicode and numeric ids, MQTT errors."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from broker.core.trtc import party_user_id
from tests.support.inbox import parties
from tests.support.waits import quiet, until


async def _retained(h, topic: str) -> dict | None:
    """The retained message a new subscriber gets on `topic` (None if there is none within 0.5 s)."""
    async with h.mqtt("observer-retained") as c:
        await c.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(0.5):
                async for msg in c.messages:
                    assert msg.retain
                    return json.loads(msg.payload) if msg.payload else None
        except TimeoutError:
            return None
    return None


async def _get_status(h, device_id: str = "1") -> dict:
    status, resp = await h.get(f"/api/devices/{device_id}/status")
    assert status == 200, resp
    return resp["data"]


# retained device status ---------------------------------------------------------------------------

@pytest.mark.parametrize("retain", [True, False])
async def test_retained_status_follows_whoever_wrote_last(harness, retain):
    """After a device publishes its own status, a new subscriber's retained message equals the GET."""
    await harness.post("/api/mqtt/device/status", {"device_id": "1", "battery": 85, "properties": {"fw": "1"}})
    async with harness.mqtt("device-1") as dev:
        await dev.publish("devices/1/status", json.dumps({"battery": 12}), qos=1, retain=retain)
        await until(lambda: (harness.svc.store.get_status("1") or {}).get("battery") == 12)
        got = await _retained(harness, "devices/1/status")
        assert got is not None
        assert got.pop("origin") == "server"
        assert got == await _get_status(harness)
        assert got["battery"] == 12
        assert got["properties"] == {"fw": "1"}
        # a refused publish (battery out of range) must not leave the device's bad message retained
        await dev.publish("devices/1/status", json.dumps({"battery": 500}), qos=1, retain=True)
        await quiet(0.2)  # the refused message is not retained
    got = await _retained(harness, "devices/1/status")
    assert got is not None
    assert got.pop("origin") == "server"
    assert got == await _get_status(harness)
    await harness.post("/api/mqtt/device/status", {"device_id": "1", "battery": 30})
    got = await _retained(harness, "devices/1/status")
    assert got is not None
    assert got["battery"] == 30
    assert got["online"] is False


# offline grace timers -----------------------------------------------------------------------------

async def test_old_grace_timer_does_not_cut_a_new_call(make_harness):
    """A device that dropped just before starting a call gets the full grace period counted from the call's start."""
    grace = 1.0
    h = await make_harness(calls={"party_offline_grace_s": grace})
    async with h.mqtt("device-1"):
        pass
    await asyncio.sleep(0.5)  # the old timer has 0.5 s left
    started = time.monotonic()
    call_id = (await h.start_call("1"))["call_id"]
    await asyncio.sleep(grace - 0.2 - (time.monotonic() - started))
    data = (await h.get(f"/api/mqtt/session?call_id={call_id}"))[1]["data"]
    assert data["status"] == "ringing", data
    await until(lambda: h.svc.calls.active_count == 0, timeout=3)
    assert time.monotonic() - started >= grace
    data = (await h.get(f"/api/mqtt/session?call_id={call_id}"))[1]["data"]
    assert data["end_reason"] == "party_offline"


async def test_reconnect_within_grace_keeps_new_call(make_harness):
    """A device that comes back within the grace counted from the call's start keeps its call."""
    grace = 0.6
    h = await make_harness(calls={"party_offline_grace_s": grace})
    async with h.mqtt("device-1"):
        pass
    await asyncio.sleep(0.3)  # the clock: part of the old grace timer runs down
    call_id = (await h.start_call("1"))["call_id"]
    async with h.mqtt("device-1"):
        await asyncio.sleep(grace + 0.3)
        data = (await h.get(f"/api/mqtt/session?call_id={call_id}"))[1]["data"]
        assert data["status"] == "ringing"


# action words -------------------------------------------------------------------------------------

async def test_resident_words_reach_the_device(harness, party):
    """`timeout` stays `timeout`; `hangup` while ringing is `rejected`, reason `hangup`; all timeouts end `timeout`."""
    dev = await party("device", "1")
    ctl = "/api/mqtt/controller/resident"
    call_id = (await harness.start_call())["call_id"]
    await harness.post(ctl, {"resident_id": "2", "call_info": {"call_id": call_id, "action": "timeout"}})
    _, body = await dev.wait_for(lambda t, b: t.endswith("control") and b.get("resident_id") == "2")
    assert body["call_info"]["action"] == "timeout"
    await harness.post(ctl, {"resident_id": "3", "call_info": {"call_id": call_id, "action": "timeout"}})
    _, body = await dev.wait_for(lambda t, b: t.endswith("control") and b.get("resident_id") == "3")
    assert body["call_info"]["action"] == "timeout"
    assert (await harness.get(f"/api/mqtt/session?call_id={call_id}"))[1]["data"]["end_reason"] == "timeout"

    call_id = (await harness.start_call())["call_id"]
    await harness.post(ctl, {"resident_id": "2", "call_info": {"call_id": call_id, "action": "hangup"}})
    _, body = await dev.wait_for(lambda t, b: t.endswith("control") and b.get("call_info", {}).get("call_id")
                                 == call_id and b.get("resident_id") == "2")
    assert body["call_info"]["action"] == "rejected"
    assert body["call_info"]["reason"] == "hangup"
    await harness.post(ctl, {"resident_id": "3", "call_info": {"call_id": call_id, "action": "timeout"}})
    await until(lambda: harness.svc.calls.active_count == 0)
    assert (await harness.get(f"/api/mqtt/session?call_id={call_id}"))[1]["data"]["end_reason"] == "rejected"


# Unicode and numeric ids --------------------------------------------------------------------------

async def test_unicode_ids_end_to_end(harness):
    """Household `东区-101`, resident `门口`, device `大门`: created, called, rung and answered over MQTT topics."""
    assert (await harness.post("/api/admin/households", {"household_number": "东区-101"}))[0] == 200
    status, resp = await harness.post("/api/admin/residents", {"resident_id": "门口", "household_number": "东区-101"})
    assert status == 200, resp
    token = resp["data"]["token"]
    assert token.isascii()  # it travels in HTTP headers
    assert (await harness.post("/api/admin/devices", {"device_id": "大门", "household_number": "东区-101"}))[0] == 200
    async with parties(harness) as connect:
        res = await connect("resident", "门口", topics=["users/门口/#"], username="门口", password=token)
        dev = await connect("device", "大门", topics=["devices/大门/#"])
        call = await harness.start_call("大门")
        assert call["target_resident_ids"] == ["门口"]
        assert call["household_number"] == "东区-101"
        _, body = await res.wait_for(lambda t, b: t == "users/门口/calls/incoming")
        assert body["call_id"] == call["call_id"]
        assert body["tencen_rtc"]["user_id"] == party_user_id("resident", "门口")
        assert body["tencen_rtc"]["user_id"].startswith("resident-")  # mapped: TRTC takes only [a-zA-Z0-9_-]
        await res.client.publish("users/门口/calls/control",
                                 json.dumps({"call_info": {"call_id": call["call_id"], "action": "answered"}}), qos=1)
        _, body = await dev.wait_for(lambda t, b: t == "devices/大门/calls/control"
                                     and b.get("call_info", {}).get("action") == "answered")
        assert body["resident_id"] == "门口"
    status, resp = await harness.get(f"/api/mqtt/session?call_id={call['call_id']}", token=token)
    assert status == 200
    assert resp["data"]["resident_id"] == "门口"
    status, resp = await harness.get("/api/calls?household_number=东区-101")
    assert status == 200
    assert [c["call_id"] for c in resp["data"]] == [call["call_id"]]
    assert (await harness.get("/api/devices/大门/status"))[0] == 200  # presence stored it


async def test_numeric_ids_everywhere(harness):
    """A JSON number is accepted wherever an id is, and means its decimal string."""
    status, resp = await harness.post("/api/rtc/token", {"user_id": 456, "channel_id": 123})
    assert status == 200
    assert resp["data"]["user_id"] == "456"
    assert resp["data"]["channel_id"] == "123"
    status, resp = await harness.post("/api/trtc/usersig", {"user_id": 123})
    assert status == 200
    assert resp["data"]["user_id"] == "123"
    assert (await harness.post("/api/admin/households", {"household_number": 103}))[0] == 200
    status, resp = await harness.post("/api/admin/residents", {"resident_id": 7, "household_number": 103})
    assert status == 200
    assert resp["data"]["resident_id"] == "7"
    call = await harness.start_call(device_id=1)  # type: ignore[arg-type]
    status, resp = await harness.post("/api/mqtt/end-session", {"call_id": call["call_id"]})
    assert status == 200
    status, _ = await harness.post("/api/mqtt/end-session", {"call_id": 12345})
    assert status == 404


@pytest.mark.parametrize("bad", ["a/b", "a+b", "a#", "a\u0000b", "a\nb", "a\u0085b", "x" * 65, "", " ", True, None,
                                 [], {}])
async def test_bad_ids_are_refused_the_same_everywhere(harness, bad):
    """An id with `/`, `+`, `#`, NUL or control characters, empty, over 64 characters or not a string is a 400."""
    for path, body in (("/api/admin/households", {"household_number": bad}),
                       ("/api/trtc/usersig", {"user_id": bad}),
                       ("/api/mqtt/call", {"device_id": bad})):
        status, resp = await harness.post(path, body)
        assert status == 400, (path, bad, resp)
        assert resp["message"].startswith("无效的请求参数: "), (path, bad, resp)


async def test_sixty_four_characters_not_bytes(harness):
    """The 64 limit counts characters: 64 Chinese characters (192 bytes) is a valid id."""
    status, resp = await harness.post("/api/admin/households", {"household_number": "门" * 64})
    assert status == 200, resp


# MQTT errors: category, bad JSON, non-finite numbers ----------------------------------------------

async def test_mqtt_errors_start_with_their_category(harness, party):
    """MQTT errors use the same texts as REST: category, then the English detail, plus a reason where needed."""
    dev = await party("device", "1")
    await dev.client.publish("calls/request/1", b"[" * 60_000, qos=1)
    _, err = await dev.wait_for(lambda t, b: isinstance(b, dict) and "error" in b)
    assert err["error"]["code"] == 400, err
    assert err["error"]["message"].startswith("无效的请求参数: "), err
    dev.messages.clear()
    await dev.client.publish("devices/1/status", b'{"battery": NaN}', qos=1)
    _, err = await dev.wait_for(lambda t, b: isinstance(b, dict) and "error" in b)
    assert err["error"]["code"] == 400, err
    assert err["error"]["message"].startswith("无效的请求参数: "), err
    dev.messages.clear()
    call_id = (await harness.start_call())["call_id"]
    await dev.client.publish("calls/request/1", b"{}", qos=1)
    _, err = await dev.wait_for(lambda t, b: isinstance(b, dict) and "error" in b)
    assert err["error"]["code"] == 409
    assert err["error"]["message"].startswith("状态冲突: ")
    assert err["error"]["reason"] == "busy"
    dev.messages.clear()
    await dev.client.publish("devices/1/calls/control",
                             json.dumps({"call_info": {"call_id": "call-nope", "action": "hangup"}}), qos=1)
    _, err = await dev.wait_for(lambda t, b: isinstance(b, dict) and "error" in b)
    assert err["error"]["code"] == 404
    assert err["error"]["message"].startswith("资源不存在: call 'call-nope'")
    assert call_id


async def test_client_id_suffix_is_the_same_party(make_harness):
    """An anonymous `resident-门口/phone` is resident `门口` for presence: its drop ends the call it answered."""
    h = await make_harness(calls={"party_offline_grace_s": 0.3})
    await h.post("/api/admin/households", {"household_number": "东区-101"})
    await h.post("/api/admin/residents", {"resident_id": "门口", "household_number": "东区-101"})
    await h.post("/api/admin/devices", {"device_id": "大门", "household_number": "东区-101"})
    async with h.mqtt("resident-门口/phone") as res:
        call_id = (await h.start_call("大门"))["call_id"]
        await res.publish("users/门口/calls/control",
                          json.dumps({"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
        await until(lambda: h.svc.calls._active[call_id].answered_by == "门口")
    await until(lambda: h.svc.calls.active_count == 0)
    data = (await h.get(f"/api/mqtt/session?call_id={call_id}"))[1]["data"]
    assert data["end_reason"] == "party_offline"
