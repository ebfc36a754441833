"""A client written only against the seed documents, on the shipped broker.yaml (ports 0, a tmp data dir).

The request bodies below are copied from /work/shared/seeds/ unchanged (comments dropped, as JSON has none);
only the placeholder `call-20250510-abcdef123456` is replaced by the real call id. Real MQTT 3.1.1 and 5
clients (paho through aiomqtt, raw MQTT 5 bytes) listen where the seed says.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from broker.config import Settings, load_settings
from tests.support.harness import ADMIN, Harness
from tests.support.inbox import parties
from tests.support.raw_mqtt import PUBACK, Raw, connect5, publish5
from tests.support.security import granted, login

SHIPPED = Path(__file__).resolve().parents[2] / "broker.yaml"
PLACEHOLDER = "call-20250510-abcdef123456"

# seed 000, 发起通话 (household_number given) and the same without it
SEED_CALL = '{"device_id": "1", "household_number": "101", "timestamp": 1651234567890}'
SEED_CALL_OTHER = '{"device_id": "1", "household_number": "102", "timestamp": 1651234567890}'
# seed 000, 处理被呼叫方动作
SEED_RESIDENT = ('{"call_info": {"call_id": "call-20250510-abcdef123456", "action": "answered", '
                 '"reason": "user_busy", "timestamp": 1651234567890}}')
# seed 000, 处理呼叫方动作
SEED_DEVICE = ('{"call_info": {"call_id": "call-20250510-abcdef123456", "action": "hangup", '
               '"reason": "user_cancelled", "timestamp": 1651234567890}}')
# seed 001, 发起 MQTT 通话 / 开始腾讯视频通话 / 获取 RTC 令牌
SEED_001_CALL = '{"device_device_id": "1", "target_resident_id": "2", "timestamp": 1651234567890}'
SEED_001_TRTC_CALL = '{"device_id": "1", "resident_id": "2"}'
SEED_001_RTC_TOKEN = '{"user_id": "user456", "channel_id": "room123"}'

TRTC_USER = re.compile(r"[A-Za-z0-9_-]{1,32}")
TRTC_ROOM = re.compile(r"[A-Za-z0-9 !#$%&()+\-:;<=.>?@\[\]^_{}|~,]{1,64}")


def shipped(tmp_path: Path, **changes: dict[str, Any]) -> Settings:
    """The repository's broker.yaml with ports 0 and a tmp data dir (and `changes` merged into sections)."""
    raw = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    path = tmp_path / "shipped.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return load_settings(path, {"mqtt_port": 0, "ws_port": 0, "http_port": 0, "data_dir": str(tmp_path)},
                         env={"INTERCOM_ADMIN_TOKEN": ADMIN})


def with_call(body: str, call_id: str, **replace: str) -> bytes:
    out = body.replace(PLACEHOLDER, call_id)
    for old, new in replace.items():
        out = out.replace(f'"{old}"', f'"{new}"')
    return out.encode()


def is_control(action: str, reason: str | None = "*") -> Callable[[str, Any], bool]:
    def pred(topic: str, body: Any) -> bool:
        info = body.get("call_info", {}) if isinstance(body, dict) else {}
        return (topic.endswith("/calls/control") and info.get("action") == action
                and (reason == "*" or info.get("reason") == reason))
    return pred


@pytest.fixture
async def box(make_harness: Callable[..., Any], tmp_path: Path) -> Harness:
    h: Harness = await make_harness(shipped(tmp_path))
    return h


V311 = {"protocol": aiomqtt.ProtocolVersion.V311}
V5 = {"protocol": aiomqtt.ProtocolVersion.V5, "clean": None}


# 1. the seed's resident controller body, with no identity (local-only mode) --------------------

async def test_seed_answered_with_no_identity_is_the_households_answer(box: Harness) -> None:
    """The seed 000 `answered` body on a call ringing residents 2 and 3: the device hears `answered`,
    both residents `answered_elsewhere`, and the session is connected with `answered_by` null."""
    async with parties(box) as connect:
        device = await connect("device", "1", **V311)
        r2 = await connect("resident", "2", **V5)
        r3 = await connect("resident", "3", **V311)
        status, resp = await box.post("/api/mqtt/call", None, raw=SEED_CALL.encode())
        assert status == 200, resp
        call_id = resp["data"]["call_id"]
        assert resp["data"]["target_resident_ids"] == ["2", "3"]
        status, resp = await box.post("/api/mqtt/controller/resident", None, raw=with_call(SEED_RESIDENT, call_id))
        assert (status, resp) == (200, {"code": 0, "message": "成功", "data": None})
        _, told = await device.wait_for(is_control("answered"))
        assert "resident_id" not in told
        for inbox in (r2, r3):
            await inbox.wait_for(is_control("cancelled", "answered_elsewhere"))
        status, resp = await box.get(f"/api/mqtt/session?call_id={call_id}")
        assert resp["data"]["status"] == "connected"
        assert resp["data"]["resident_id"] is None
        # a hangup with no identity on a call the household answered: the household hangs up
        status, resp = await box.post("/api/mqtt/controller/resident", None,
                                      raw=with_call(SEED_RESIDENT, call_id, answered="hangup"))
        assert status == 200, resp
        await device.wait_for(is_control("hangup"))
        status, resp = await box.get(f"/api/mqtt/session?call_id={call_id}")
        assert resp["data"]["end_reason"] == "hangup"


async def test_seed_hangup_with_no_identity_is_the_answerers(box: Harness) -> None:
    """Resident 2 answered over MQTT; the seed body's `hangup` with no identity is resident 2's hangup."""
    async with parties(box) as connect:
        device = await connect("device", "1", **V5)
        r2 = await connect("resident", "2", **V311)
        call_id = (await box.start_call("1"))["call_id"]
        await r2.client.publish("users/2/calls/control", with_call(SEED_RESIDENT, call_id), qos=1)
        await device.wait_for(is_control("answered"))
        status, resp = await box.post("/api/mqtt/controller/resident", None,
                                      raw=with_call(SEED_RESIDENT, call_id, answered="hangup"))
        assert status == 200, resp
        _, told = await device.wait_for(is_control("hangup"))
        assert told["resident_id"] == "2"
        assert (await box.get(f"/api/mqtt/session?call_id={call_id}"))[1]["data"]["end_reason"] == "hangup"


async def test_seed_rejected_with_no_identity_ends_the_call(box: Harness) -> None:
    """The household's `rejected` ends a call ringing several residents `rejected`; both stop ringing."""
    async with parties(box) as connect:
        device = await connect("device", "1", **V311)
        r3 = await connect("resident", "3", **V5)
        call_id = (await box.start_call("1"))["call_id"]
        status, resp = await box.post("/api/mqtt/controller/resident", None,
                                      raw=with_call(SEED_RESIDENT, call_id, answered="rejected"))
        assert status == 200, resp
        await device.wait_for(is_control("rejected"))
        await r3.wait_for(is_control("cancelled", "rejected_elsewhere"))
        data = (await box.get(f"/api/mqtt/session?call_id={call_id}"))[1]["data"]
        assert (data["status"], data["end_reason"]) == ("ended", "rejected")


async def test_seed_device_body_still_works(box: Harness) -> None:
    """The seed 000 device `hangup` body on a ringing call cancels it."""
    call_id = (await box.start_call("1"))["call_id"]
    status, resp = await box.post("/api/mqtt/controller/device", None, raw=with_call(SEED_DEVICE, call_id))
    assert status == 200, resp
    assert (await box.get(f"/api/mqtt/session?call_id={call_id}"))[1]["data"]["end_reason"] == "cancelled"


# 2. household_number / target_resident_id pick any household of a device whose kind is not set -------

async def test_seed_household_number_calls_another_household(box: Harness) -> None:
    """The shipped demo device calls household 102 (seed 000) and a resident of it (seed 001), until the
    installer makes it a `door` station."""
    assert (await box.post("/api/admin/households", {"household_number": "102"}))[0] == 200
    assert (await box.post("/api/admin/residents", {"resident_id": "4", "household_number": "102"}))[0] == 200
    status, resp = await box.post("/api/mqtt/call", None, raw=SEED_CALL_OTHER.encode())
    assert status == 200, resp
    assert resp["data"]["target_resident_ids"] == ["4"]
    await box.post("/api/mqtt/end-session", {"call_id": resp["data"]["call_id"]})
    status, resp = await box.post("/api/trtc/call", None, raw=SEED_001_TRTC_CALL.replace('"2"', '"4"').encode())
    assert status == 200, resp
    await box.post("/api/mqtt/end-session", {"call_id": resp["data"]["call_id"]})
    status, resp = await box.post("/api/mqtt/call", None, raw=SEED_001_CALL.encode())
    assert status == 200, resp
    assert resp["data"]["target_resident_ids"] == ["2"], resp
    await box.post("/api/mqtt/end-session", {"call_id": resp["data"]["call_id"]})
    async with box.http.patch(f"{box.base}/api/admin/devices/1", json={"kind": "door"}) as r:
        assert r.status == 200
        assert (await r.json())["data"]["kind"] == "door"
    status, resp = await box.post("/api/mqtt/call", None, raw=SEED_CALL_OTHER.encode())
    assert (status, resp["data"]) == (403, {"reason": "out_of_scope"})


# 4. TRTC ids ------------------------------------------------------------------------------------

ODD_IDS = ["东区-101", "门口", "a-b", "r" + "0123456789" * 6 + "xyz", "x" * 64, "with space", "1.5"]


async def test_trtc_ids_follow_trtcs_rules_for_every_id_shape(box: Harness) -> None:
    """Every user_id and room_id the box issues fits TRTC's rules, for each id shape protocol.md allows;
    ids that fit keep `device_1` / `resident_2`; the session and history name each party's TRTC id."""
    seen: dict[str, str] = {}
    for n, ident in enumerate(ODD_IDS):
        hh = f"h{n}"
        assert (await box.post("/api/admin/households", {"household_number": hh}))[0] == 200
        assert (await box.post("/api/admin/residents", {"resident_id": ident, "household_number": hh}))[0] == 200
        assert (await box.post("/api/admin/devices", {"device_id": ident, "household_number": hh}))[0] == 200
        async with parties(box) as connect:
            phone = await connect("resident", ident, **V5)
            status, resp = await box.post("/api/mqtt/call", {"device_id": ident})
            assert status == 200, resp
            call = resp["data"]
            _, invite = await phone.wait_for(lambda t, _b: t.endswith("/calls/incoming"))
        users = [call["tencen_rtc"]["user_id"], invite["tencen_rtc"]["user_id"]]
        for user in users:
            assert TRTC_USER.fullmatch(user), user
            assert len(user.encode()) <= 32, user
        assert TRTC_ROOM.fullmatch(call["tencen_rtc"]["room_id"])
        assert len(call["tencen_rtc"]["room_id"]) <= 64
        status, resp = await box.get(f"/api/mqtt/session?call_id={call['call_id']}&resident_id={ident}")
        session = resp["data"]
        assert session["tencen_rtc"]["user_id"] == users[1]
        assert session["trtc_user_ids"] == {"device": users[0], "residents": {ident: users[1]}}
        history = (await box.get(f"/api/calls?device_id={ident}"))[1]["data"]
        assert history[0]["trtc_user_ids"] == session["trtc_user_ids"]
        # the same name asked for over /api/trtc/usersig is the same TRTC id (an id is at most 64 characters)
        for name in [f"resident_{ident}", users[1]] if len(ident) <= 55 else [users[1]]:
            status, resp = await box.post("/api/trtc/usersig", {"user_id": name})
            assert status == 200, resp
            assert resp["data"]["user_id"] == users[1], resp
        await box.post("/api/mqtt/end-session", {"call_id": call["call_id"]})
        for user in users:
            assert seen.setdefault(user, ident) == ident, f"{user} issued for {seen[user]} and {ident}"
    # ids that fit are kept
    call = await box.start_call("1")
    assert call["tencen_rtc"]["user_id"] == "device_1"
    await box.post("/api/mqtt/end-session", {"call_id": call["call_id"]})


async def test_rtc_token_room_ids(box: Harness) -> None:
    """Seed 001's /api/rtc/token works as written; a channel_id TRTC cannot take as a room id is a 400."""
    status, resp = await box.post("/api/rtc/token", None, raw=SEED_001_RTC_TOKEN.encode())
    assert status == 200, resp
    assert resp["data"]["room_id"] == "room123", resp
    assert resp["data"]["user_id"] == "user456", resp
    status, resp = await box.post("/api/rtc/token", {"user_id": "user456", "channel_id": "房间123"})
    assert status == 400, resp
    assert "channel_id" in resp["message"], resp
    status, resp = await box.post("/api/rtc/token", {"user_id": "门口", "channel_id": "room123"})
    assert status == 200, resp
    assert TRTC_USER.fullmatch(resp["data"]["user_id"]), resp


# 5-7, 9: authenticated mode ------------------------------------------------------------------------

@pytest.fixture
async def secure(make_harness: Callable[..., Any], tmp_path: Path) -> tuple[Harness, dict[str, str]]:
    h: Harness = await make_harness(shipped(tmp_path, auth={"allow_anonymous_on_loopback": False}))
    return h, {"device-1": await h.token("devices", "1"), "resident-2": await h.token("residents", "2"),
               "resident-3": await h.token("residents", "3")}


async def test_device_reads_system_messages(secure: tuple[Harness, dict[str, str]]) -> None:
    """In authenticated mode a door station may subscribe `system/#` and gets the seed's system message."""
    h, tokens = secure
    async with h.mqtt(**login(tokens, "device-1")) as device:
        assert granted(await device.subscribe("system/#", qos=1)) == [1]
        body = {"type": "notification", "level": "info", "message": "系统将于今晚22:00进行升级维护",
                "timestamp": 1651234567890, "data": {}}
        assert (await h.post("/api/mqtt/system/message", body, ADMIN))[0] == 200
        async with asyncio.timeout(5):
            async for msg in device.messages:
                assert str(msg.topic) == "system/notification"
                break


async def test_401_carries_www_authenticate(secure: tuple[Harness, dict[str, str]]) -> None:
    """A missing or unknown bearer token is a 401 with `WWW-Authenticate: Bearer realm=...` (RFC 6750)."""
    h, _ = secure
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
        async with h.http.get(f"{h.base}/api/calls", headers=headers) as r:
            assert r.status == 401
            assert r.headers.get("WWW-Authenticate", "").startswith('Bearer realm="intercom-broker"'), r.headers


async def test_authenticated_resident_identity(secure: tuple[Harness, dict[str, str]]) -> None:
    """Authenticated: the admin without `resident_id` still gets 400 on a call ringing several residents;
    resident 2's token naming resident 3 in the body is 403; the token alone answers as resident 2."""
    h, tokens = secure
    status, resp = await h.post("/api/mqtt/call", None, tokens["device-1"], raw=SEED_CALL.encode())
    assert status == 200, resp
    call_id = resp["data"]["call_id"]
    status, resp = await h.post("/api/mqtt/controller/resident", None, ADMIN, raw=with_call(SEED_RESIDENT, call_id))
    assert (status, resp["data"]) == (400, {"reason": "resident_id_required"}), resp
    body = json.loads(with_call(SEED_RESIDENT, call_id))
    status, resp = await h.post("/api/mqtt/controller/resident", {**body, "resident_id": "3"}, tokens["resident-2"])
    assert status == 403, resp
    status, resp = await h.post("/api/mqtt/controller/resident", None, tokens["resident-2"],
                                raw=with_call(SEED_RESIDENT, call_id))
    assert status == 200, resp
    data = (await h.get(f"/api/mqtt/session?call_id={call_id}", ADMIN))[1]["data"]
    assert data["resident_id"] == "2"


# 6. MQTT 5 calls/request is acknowledged 0x00 -----------------------------------------------------

async def test_v5_call_request_puback_success(box: Harness) -> None:
    """A v5 `calls/request/1` nobody else subscribes to is handled by the call service: PUBACK 0x00."""
    raw = await Raw.open(box.server.mqtt_port)
    try:
        await raw.send(connect5("device-1"))
        got = await raw.read_packet()
        assert got is not None
        assert got[1][1] == 0
        await raw.send(publish5("calls/request/1", b'{"household_number": "101"}', qos=1, packet_id=7))
        got = await raw.read_packet()
        assert got is not None, got
        assert got[0] == PUBACK, got
        assert got[1][:2] == b"\x00\x07", got
        assert got[1][2:3] in (b"", b"\x00"), got
    finally:
        await raw.close(disconnect=True)


# 8. timestamps -----------------------------------------------------------------------------------

@pytest.mark.parametrize("ts", [1651234567, "1651234567890", 0, -1, 1651234567890.5, True,
                                int(time.time() * 1000) + 10 * 86400_000 * 365],
                         ids=["seconds", "string", "zero", "negative", "fraction", "bool", "ten-years-ahead"])
async def test_bad_timestamps_are_400(box: Harness, ts: Any) -> None:
    """A `timestamp` that is not epoch milliseconds of a plausible time is a clear 400, naming the field."""
    status, resp = await box.post("/api/mqtt/call", {"device_id": "1", "timestamp": ts})
    assert status == 400, resp
    assert "timestamp" in resp["message"], resp
    status, resp = await box.post("/api/mqtt/system/message",
                                  {"type": "t", "level": "info", "message": "m", "timestamp": ts})
    assert status == 400, resp
    assert "timestamp" in resp["message"], resp


async def test_seed_timestamp_is_echoed_server_clock_beside(box: Harness) -> None:
    """The seed's own timestamp is accepted and echoed in `call_info`; the top-level `timestamp` is the server's."""
    before = int(time.time() * 1000)
    status, resp = await box.post("/api/mqtt/call", None, raw=SEED_CALL.encode())
    assert status == 200, resp
    assert resp["data"]["call_info"]["timestamp"] == 1651234567890
    assert resp["data"]["timestamp"] >= before


# 9. conflicting identities ------------------------------------------------------------------------

async def test_conflicting_identities(box: Harness) -> None:
    """Two different ids for the device are 400; a body naming another device than the topic is a 403 on
    the control topic; a resident's body naming another resident on its own topic is a 403 there too."""
    status, resp = await box.post("/api/mqtt/call", {"device_id": "1", "device_device_id": "2"})
    assert status == 400, resp
    assert "device_device_id" in resp["message"], resp
    status, resp = await box.post("/api/mqtt/call", {"device_id": "1", "device_device_id": "1"})
    assert status == 200, resp
    call_id = resp["data"]["call_id"]
    async with parties(box) as connect:
        device = await connect("device", "1", **V311)
        r2 = await connect("resident", "2", **V5)
        await device.client.publish("calls/request/1", json.dumps({"device_id": "9"}).encode(), qos=1)
        _, err = await device.wait_for(lambda t, b: isinstance(b, dict) and "error" in b)
        assert err["error"]["code"] == 403, err
        body = json.loads(with_call(SEED_RESIDENT, call_id))
        await r2.client.publish("users/2/calls/control", json.dumps({**body, "resident_id": "3"}).encode(), qos=1)
        _, err = await r2.wait_for(lambda t, b: isinstance(b, dict) and "error" in b)
        assert err["error"]["code"] == 403, err
    data = (await box.get(f"/api/mqtt/session?call_id={call_id}"))[1]["data"]
    assert data["status"] == "ringing"


# the README quickstart, with mosquitto_sub / mosquitto_pub -------------------------------------------

async def _sub(port: int, client_id: str, topic: str, count: int, *extra: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-i", client_id, "-q", "1", "-t", topic, "-v",
        "-C", str(count), "-W", "10", *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(0.5)  # let it subscribe
    return proc


async def _lines(proc: asyncio.subprocess.Process) -> list[tuple[str, Any]]:
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err
    return [(t, json.loads(p)) for t, _, p in (line.partition(" ") for line in out.decode().splitlines())]


async def test_quickstart_with_mosquitto_clients(box: Harness) -> None:
    """The quickstart: resident 2's own subscriber (3.1.1) hears `answered_elsewhere` from its app's answer
    (client resident-2/app), then the door's `hangup`; the device (an MQTT 5 subscriber) hears `answered`."""
    port = box.server.mqtt_port
    # incoming, the app's own publish, the server's cancelled, the hangup
    r2 = await _sub(port, "resident-2", "users/2/#", 4)
    device = await _sub(port, "device-1", "devices/1/calls/control", 1, "-V", "mqttv5")
    status, resp = await box.post("/api/mqtt/call", None, raw=SEED_CALL.encode())
    assert status == 200, resp
    call_id = resp["data"]["call_id"]
    pub = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-i", "resident-2/app", "-q", "1",
        "-t", "users/2/calls/control", "-m", json.dumps({"call_info": {"call_id": call_id, "action": "answered"}}))
    assert await asyncio.wait_for(pub.wait(), 10) == 0
    told = await _lines(device)
    assert told[0][1]["call_info"]["action"] == "answered"
    assert told[0][1]["resident_id"] == "2"
    status, resp = await box.post("/api/mqtt/controller/device", None, raw=with_call(SEED_DEVICE, call_id))
    assert status == 200, resp
    heard = await _lines(r2)
    assert heard[0][0] == "users/2/calls/incoming"
    server = [b for _, b in heard[1:] if b.get("origin") == "server"]
    assert [(b["call_info"]["action"], b["call_info"]["reason"]) for b in server] == [
        ("cancelled", "answered_elsewhere"), ("hangup", "user_cancelled")]
    assert server[0]["client_id"] == "resident-2/app"
