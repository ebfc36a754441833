"""Door safety: no late unlock after its ack timeout, one unlock in flight per door, a per-principal command
rate, and a station's ack after a server crash still counts."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tests.support.doors import wait_online
from tests.support.harness import Harness
from tests.support.process import ServerProcess
from tests.support.raw_mqtt import PUBLISH, Raw, connack5, connect, connect5, parse_publish, read_props, subscribe5

UNLOCK = {"device_id": "1", "resident_id": "2"}


async def _silent_station(h: Harness, v5: bool = False) -> Raw:
    """Device 1 with a persistent session, subscribed to its commands, that will never acknowledge them."""
    if v5:
        raw = await Raw.open(h.server.mqtt_port)
        expiry = b"\x05\x11\x00\x00\x0e\x10"  # Session Expiry Interval 3600 s
        got = await connack5(raw, connect5("device-1", clean=False, properties=expiry))
        assert got is not None
        assert got[0] == 0
        await raw.send(subscribe5([("devices/1/commands", 1)]))
        assert (await raw.read_packet())[0] == 0x90  # type: ignore[index]
    else:
        raw = await Raw.connected(h.server.mqtt_port, "device-1", clean=False)
        assert await raw.subscribe([("devices/1/commands", 1)]) == [1]
    await wait_online(h, "1")
    return raw


async def _commands_within(raw: Raw, seconds: float) -> list[bytes]:
    """Payloads of the `devices/1/commands` PUBLISHes a station gets within `seconds` (v5 properties skipped)."""
    out: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        got = await raw.poll(left)
        if got is not None and got[0] & 0xF0 == PUBLISH:
            out.append(got[1])
    return [body for body in out if b"devices/1/commands" in body[:24]]


@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
async def test_a_timed_out_unlock_never_reaches_the_station_after_it_reconnects(make_harness, v5):
    """The station took the unlock but never acked (its link went silent): 504, and when it comes back on
    its persistent session the expired command is not re-sent (it carries `expires_at` and, on v5, an expiry)."""
    h = await make_harness(doors={"ack_timeout_s": 1})
    raw = await _silent_station(h, v5)
    call_id = (await h.start_call())["call_id"]
    before = time.time()
    unlock = asyncio.create_task(h.post("/api/doors/unlock", {**UNLOCK, "call_id": call_id}))
    got = await raw.read_packet(5)
    assert got is not None
    assert got[0] & 0xF0 == PUBLISH
    if v5:
        tlen = int.from_bytes(got[1][:2], "big")
        props, end = read_props(got[1], 2 + tlen + 2)
        assert props.get(0x02) in (1, b"\x00\x00\x00\x01")  # Message Expiry Interval = ack_timeout_s
        command = json.loads(got[1][end:])
    else:
        command = json.loads(parse_publish(*got).payload)
    assert command["command"] == "unlock"
    assert before * 1000 < command["expires_at"] <= (time.time() + 1) * 1000 + 50
    status, resp = await unlock
    assert status == 504, resp
    assert resp["data"]["reason"] == "ack_timeout", resp
    raw.abort()  # gone without DISCONNECT
    await h.offline("device-1")
    back = await Raw.open(h.server.mqtt_port)
    if v5:
        got5 = await connack5(back, connect5("device-1", clean=False, properties=b"\x05\x11\x00\x00\x0e\x10"))
        assert got5 is not None
        assert got5[0] == 0
    else:
        assert await back.connack(connect("device-1", clean=False)) == 0
        assert back.session_present
    assert await _commands_within(back, 1.5) == []
    await back.close(disconnect=True)


async def test_a_station_dropped_for_silence_does_not_get_the_unlock_when_it_returns(make_harness):
    """The station stops reading and pinging (keepalive 1 s): the unlock gets 504, the server drops the
    link after 1.5 x keepalive, and the station's resumed session does not get the command again."""
    h = await make_harness(doors={"ack_timeout_s": 1})
    raw = await Raw.connected(h.server.mqtt_port, "device-1", clean=False, keepalive=1)
    assert await raw.subscribe([("devices/1/commands", 1)]) == [1]
    await wait_online(h, "1")
    call_id = (await h.start_call())["call_id"]
    status, resp = await h.post("/api/doors/unlock", {**UNLOCK, "call_id": call_id})
    assert status == 504, resp
    assert resp["data"]["reason"] == "ack_timeout", resp
    assert await raw.closed(timeout=5)  # dropped by the server; the unread command is still in flight
    back = await Raw.connected(h.server.mqtt_port, "device-1", clean=False)
    assert back.session_present
    assert await _commands_within(back, 1.5) == []
    await back.close(disconnect=True)


async def _acking_station(h: Harness, delay_s: float) -> tuple[Raw, list[dict], asyncio.Task[None]]:
    """Device 1 acking every command `ok` after `delay_s` (a relay that takes its time)."""
    raw = await Raw.connected(h.server.mqtt_port, "device-1")
    assert await raw.subscribe([("devices/1/commands", 1)]) == [1]
    await wait_online(h, "1")
    commands: list[dict] = []

    async def run() -> None:
        while (got := await raw.poll(10)) is not None:
            if got[0] & 0xF0 != PUBLISH:
                continue
            p = parse_publish(*got)
            await raw.puback(p.packet_id)
            if p.topic == "devices/1/commands":
                body = json.loads(p.payload)
                commands.append(body)
                await asyncio.sleep(delay_s)
                await raw.publish("devices/1/commands/ack", json.dumps(
                    {"command_id": body["command_id"], "ok": True}).encode(), qos=1)

    return raw, commands, asyncio.create_task(run())


async def test_a_burst_of_unlocks_during_one_call_opens_the_door_once(make_harness):
    """30 REST unlocks and 30 MQTT unlocks while one call rings: one command to the station, one door event,
    one 200; the rest are refused (409 `unlock_in_progress` while it is in flight, the call's end after)."""
    h = await make_harness(doors={"ack_timeout_s": 5}, limits={"mqtt_commands_per_principal": {"per_s": 1,
                                                                                                 "burst": 100}})
    raw, commands, task = await _acking_station(h, 0.5)
    resident = await Raw.connected(h.server.mqtt_port, "resident-2")
    assert await resident.subscribe([("users/2/calls/control", 1)]) == [1]
    call_id = (await h.start_call())["call_id"]
    rest = [asyncio.create_task(h.post("/api/doors/unlock", {**UNLOCK, "call_id": call_id})) for _ in range(30)]
    for i in range(30):
        await resident.publish("users/2/commands", json.dumps(
            {"command": "unlock", "device_id": "1", "call_id": call_id, "request_id": f"m{i}"}).encode(), qos=1)
    results = await asyncio.gather(*rest)
    statuses = sorted(s for s, _ in results)
    assert statuses.count(200) <= 1, statuses
    assert all(s in (200, 409) for s in statuses), statuses
    reasons = {r["data"].get("reason") for s, r in results if s == 409}
    assert "unlock_in_progress" in reasons, reasons
    await asyncio.sleep(1.0)  # any second command would have reached the station by now
    assert len(commands) == 1, commands
    status, resp = await h.get("/api/doors/events?device_id=1")
    assert status == 200, resp
    assert [e["outcome"] for e in resp["data"]] == ["opened"], resp
    replies = [json.loads(p) for p in await resident.publishes(0.5)]
    assert {r["error"]["code"] for r in replies if "error" in r} <= {403, 409}, replies
    assert statuses.count(200) + sum(1 for r in replies if "door" in r) == 1, (statuses, replies)
    task.cancel()
    await resident.close(disconnect=True)
    await raw.close(disconnect=True)


async def test_mqtt_commands_that_write_are_rate_limited_per_principal(make_harness):
    """300 pipelined `calls_seen` and `dnd` commands from one resident: past the burst each is refused with 429
    `rate_limited` on its control topic and writes nothing; another resident is unaffected."""
    h = await make_harness(limits={"mqtt_commands_per_principal": {"per_s": 1, "burst": 5}})
    r2 = await Raw.connected(h.server.mqtt_port, "resident-2")
    assert await r2.subscribe([("users/2/calls/control", 1)]) == [1]
    writes_before = h.svc.store.db.conn.total_changes
    for i in range(150):
        await r2.publish("users/2/commands", json.dumps({"command": "calls_seen", "request_id": f"s{i}"}).encode())
        await r2.publish("users/2/commands", json.dumps(
            {"command": "dnd", "enabled": i % 2 == 0, "request_id": f"d{i}"}).encode())
    replies = [json.loads(p) for p in await r2.publishes(1.0)]
    limited = [r for r in replies if r.get("error", {}).get("reason") == "rate_limited"]
    assert len(limited) >= 290, len(limited)
    assert all(r["error"]["code"] == 429 for r in limited)
    assert h.svc.store.db.conn.total_changes - writes_before < 40
    r3 = await Raw.connected(h.server.mqtt_port, "resident-3")
    assert await r3.subscribe([("users/3/calls/control", 1)]) == [1]
    await r3.publish("users/3/commands", json.dumps({"command": "dnd", "enabled": True, "request_id": "x"}).encode())
    reply = json.loads((await r3.next_publish()).payload)
    assert reply["call_info"]["action"] == "dnd"
    assert "error" not in reply
    await r2.close(disconnect=True)
    await r3.close(disconnect=True)


def test_a_station_ack_after_a_crash_records_the_outcome_and_ends_the_call(tmp_path: Path):
    """kill -9 between the unlock command and the station's ack: after the restart the ack of the `pending`
    event records `opened` and ends the still-ringing call `door_opened`."""
    server = ServerProcess(tmp_path, config={"calls": {"ring_timeout_s": 120}, "doors": {"ack_timeout_s": 30}})
    server.start()
    try:
        asyncio.run(_crash_between_command_and_ack(server))
    finally:
        server.stop()


async def _crash_between_command_and_ack(server: ServerProcess) -> None:
    station = await Raw.connected(server.mqtt_port, "device-d0", clean=False)
    assert await station.subscribe([("devices/d0/commands", 1)]) == [1]
    for _ in range(100):
        if (await asyncio.to_thread(server.http, "GET", "/api/devices/d0/status"))[1]["data"]["online"]:
            break
        await asyncio.sleep(0.05)
    status, resp = await asyncio.to_thread(server.http, "POST", "/api/mqtt/call", {"device_id": "d0"})
    assert status == 200, resp
    call_id = resp["data"]["call_id"]
    resident = await Raw.connected(server.mqtt_port, "resident-r0")
    await resident.publish("users/r0/commands", json.dumps(
        {"command": "unlock", "device_id": "d0", "call_id": call_id}).encode(), qos=1)
    command = json.loads((await station.next_publish()).payload)
    server.kill()
    station.abort()
    resident.abort()
    server.start()
    status, resp = await asyncio.to_thread(server.http, "GET", "/api/doors/events?device_id=d0")
    assert [e["outcome"] for e in resp["data"]] == ["pending"], resp
    station = await Raw.connected(server.mqtt_port, "device-d0", clean=False)
    await station.publish("devices/d0/commands/ack", json.dumps(
        {"command_id": command["command_id"], "ok": True}).encode(), qos=1)
    for _ in range(100):
        status, resp = await asyncio.to_thread(server.http, "GET", "/api/doors/events?device_id=d0")
        if resp["data"][0]["outcome"] != "pending":
            break
        await asyncio.sleep(0.05)
    event = resp["data"][0]
    assert event["outcome"] == "opened", event
    assert event["acked_at"] is not None, event
    status, resp = await asyncio.to_thread(server.http, "GET", f"/api/mqtt/session?call_id={call_id}")
    assert resp["data"]["status"] == "ended", resp
    assert resp["data"]["end_reason"] == "door_opened", resp
    await station.close(disconnect=True)
