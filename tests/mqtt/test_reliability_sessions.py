"""Persistent MQTT sessions: offline queueing in every auth mode, and across a server restart."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import aiomqtt
import pytest

from tests.support.harness import ADMIN
from tests.support.waits import quiet


async def _next(client: aiomqtt.Client, pred, timeout: float = 5.0) -> tuple[str, dict]:
    async with asyncio.timeout(timeout):
        async for msg in client.messages:
            body = json.loads(msg.payload)  # type: ignore[arg-type]
            if pred(str(msg.topic), body):
                return str(msg.topic), body
    raise AssertionError("unreachable")


async def _subscribe_persistent(h, client_id: str, topic: str, **kw) -> None:
    async with h.mqtt(client_id, clean=False, **kw) as c:
        await c.subscribe(topic, qos=1)


@pytest.mark.parametrize("mode", ["local-only", "authenticated"])
async def test_offline_resident_gets_missed_incoming_on_return(make_harness, mode):
    """A resident with clean session off that dropped off gets the missed QoS 1 `incoming` when back."""
    auth = {"allow_anonymous_on_loopback": mode == "local-only"}
    h = await make_harness(auth=auth)
    creds = {} if mode == "local-only" else {"username": "2", "password": await h.token("residents", "2")}
    dev = {} if mode == "local-only" else {"Authorization": f"Bearer {await h.token('devices', '1')}"}
    await _subscribe_persistent(h, "resident-2", "users/2/#", **creds)
    async with h.http.post(h.base + "/api/mqtt/call", json={"device_id": "1"}, headers=dev) as r:
        call_id = (await r.json())["data"]["call_id"]
    async with h.mqtt("resident-2", clean=False, **creds) as c:
        topic, body = await _next(c, lambda t, b: t.endswith("/calls/incoming"))
    assert topic == "users/2/calls/incoming"
    assert body["call_id"] == call_id


async def test_missed_control_messages_arrive_in_order(harness, party):
    """Every control message sent while the resident was away arrives once, in order, on return."""
    await _subscribe_persistent(harness, "resident-3", "users/3/#")
    r2 = await party("resident", "2")
    call = await harness.start_call("1")
    await r2.wait_for(lambda t, b: t.endswith("/calls/incoming"))
    status, _ = await harness.post("/api/mqtt/controller/resident",
                                   {"call_info": {"call_id": call["call_id"], "action": "answered"},
                                    "resident_id": "2"})
    assert status == 200
    got: list[tuple[str, str]] = []
    async with harness.mqtt("resident-3", clean=False) as c:
        async with asyncio.timeout(5):
            async for msg in c.messages:
                body = json.loads(msg.payload)  # type: ignore[arg-type]
                action = body.get("call_info", {}).get("action")
                got.append((str(msg.topic).rsplit("/", 1)[-1], action))
                if len(got) == 2:
                    break
        await quiet(0.3)
    assert got == [("incoming", "initiated"), ("control", "cancelled")]


@pytest.mark.parametrize("mode", ["local-only", "authenticated"])
async def test_queue_and_subscriptions_survive_restart(make_harness, mode):
    """Subscriptions and queued messages of an offline persistent session come back after a restart."""
    h1 = await make_harness(auth={"allow_anonymous_on_loopback": mode == "local-only"})
    creds = {} if mode == "local-only" else {"username": "2", "password": await h1.token("residents", "2")}
    dev = {} if mode == "local-only" else {"Authorization": f"Bearer {await h1.token('devices', '1')}"}
    admin = {"Authorization": f"Bearer {ADMIN}"}
    await _subscribe_persistent(h1, "resident-2", "users/2/#", **creds)
    async with h1.http.post(h1.base + "/api/mqtt/call", json={"device_id": "1"}, headers=dev) as r:
        call = (await r.json())["data"]
    await asyncio.sleep(0.2)
    await h1.server.stop()
    db = sqlite3.connect(h1.server.settings.server.data_dir / "sessions.db")
    # Queued (session seen offline) or in flight (sent as the socket closed): either way on disk.
    stored = db.execute("SELECT topic FROM mqtt_queue WHERE client_id = 'resident-2' UNION ALL "
                        "SELECT topic FROM mqtt_inflight WHERE client_id = 'resident-2'").fetchall()
    db.close()
    assert stored == [("users/2/calls/incoming",)]

    h2 = await make_harness(h1.server.settings)
    async with h2.mqtt("resident-2", clean=False, **creds) as c:
        _, body = await _next(c, lambda t, b: t.endswith("/calls/incoming"))
        assert body["call_id"] == call["call_id"]
        # The restored subscription keeps working for new messages too.
        async with h2.http.post(h2.base + "/api/mqtt/end-session", json={"call_id": call["call_id"]},
                                headers=admin) as r:
            assert r.status == 200
        _, body = await _next(c, lambda t, b: t.endswith("/calls/control"))
    assert body["call_info"]["call_id"] == call["call_id"]


async def test_clean_connect_discards_a_stored_session(make_harness):
    """Connecting with clean session on drops the stored session, so nothing old is replayed."""
    h1 = await make_harness()
    await _subscribe_persistent(h1, "resident-2", "users/2/#")
    await h1.start_call("1")
    await asyncio.sleep(0.2)
    def stored_rows() -> list[int]:
        db = sqlite3.connect(h1.server.settings.server.data_dir / "sessions.db")
        try:
            return [db.execute(f"SELECT COUNT(*) FROM {t} WHERE client_id = 'resident-2'").fetchone()[0]
                    for t in ("mqtt_sessions", "mqtt_subscriptions", "mqtt_queue")]
        finally:
            db.close()

    async with h1.mqtt("resident-2", clean=True):
        await h1.until(lambda: stored_rows() == [0, 0, 0], what="the stored session discarded")
    assert stored_rows() == [0, 0, 0]


async def test_client_retained_message_survives_restart(make_harness):
    """A retained message a client published is still retained after a restart; a cleared one is not."""
    h1 = await make_harness()
    async with h1.mqtt("device-1") as c:
        await c.publish("site/notice", b"kept", qos=1, retain=True)
        await c.publish("site/gone", b"x", qos=1, retain=True)
        await c.publish("site/gone", b"", qos=1, retain=True)
    await asyncio.sleep(0.2)
    await h1.server.stop()
    h2 = await make_harness(h1.server.settings)
    seen: dict[str, bytes] = {}
    async with h2.mqtt("resident-9") as c:
        await c.subscribe("site/#", qos=1)
        try:
            async with asyncio.timeout(1):
                async for msg in c.messages:
                    seen[str(msg.topic)] = bytes(msg.payload)  # type: ignore[arg-type]
        except TimeoutError:
            pass
    assert seen == {"site/notice": b"kept"}
