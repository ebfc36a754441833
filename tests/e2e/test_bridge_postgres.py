"""The bridged call service with its store in a real PostgreSQL (`store.url`), on a real Mosquitto."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg not installed (pip install -e '.[scale]')")

from broker.bridge import BridgedServer  # noqa: E402
from broker.config import ConfigError  # noqa: E402
from broker.db_open import StorageError  # noqa: E402
from broker.migrations import POSTGRES_INTERCOM, latest  # noqa: E402
from broker.scale.pg_store import PgStore, translate  # noqa: E402
from tests.mosquitto_helpers import Mosquitto, needs_mosquitto  # noqa: E402
from tests.postgres_helpers import needs_postgres, pg_url, postgres  # noqa: E402, F401 (fixtures)
from tests.support.harness import Harness, make_settings  # noqa: E402
from tests.support.inbox import Inbox  # noqa: E402

pytestmark = [pytest.mark.slow, needs_postgres, needs_mosquitto]


@pytest.fixture
async def bridged(tmp_path: Path, mosquitto: Mosquitto, pg_url: str) -> AsyncIterator[Harness]:  # noqa: F811
    server = BridgedServer(make_settings(tmp_path, store={"url": pg_url}), f"mqtt://127.0.0.1:{mosquitto.port}")
    await server.start()
    http = aiohttp.ClientSession()
    yield Harness(server, http)  # type: ignore[arg-type]
    await http.close()
    await server.stop()


def is_ctl(action: str):
    return lambda t, b: t.endswith("/calls/control") and b.get("call_info", {}).get("action") == action


async def test_call_ring_answer_hangup_history_on_postgres(bridged: Harness, pg_url: str) -> None:  # noqa: F811
    """Call, ring, answer, hang up over Mosquitto; history, events and per-resident history come from PostgreSQL."""
    assert isinstance(bridged.svc.store, PgStore)
    async with bridged.mqtt("device-1") as dev_c, bridged.mqtt("resident-2") as r2_c, \
            bridged.mqtt("resident-3") as r3_c:
        for client, flt in ((dev_c, "devices/1/#"), (r2_c, "users/2/#"), (r3_c, "users/3/#")):
            await client.subscribe(flt, qos=1)
        dev, r2, r3 = Inbox(dev_c), Inbox(r2_c), Inbox(r3_c)
        await dev_c.publish("calls/request/1", json.dumps({"household_number": "101", "request_id": "rq-1"}), qos=1)
        _, reply = await dev.wait_for(lambda t, b: b.get("request_id") == "rq-1")
        call_id = reply["call_id"]
        for inbox in (r2, r3):
            _, body = await inbox.wait_for(lambda t, b: t.endswith("/calls/incoming"))
            assert body["call_id"] == call_id
        await r2_c.publish("users/2/calls/control", json.dumps(
            {"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
        _, body = await dev.wait_for(is_ctl("answered"))
        assert body["resident_id"] == "2"
        await r3.wait_for(is_ctl("cancelled"))
        await dev_c.publish("devices/1/calls/control", json.dumps(
            {"call_info": {"call_id": call_id, "action": "hangup", "reason": "done"}}), qos=1)
        _, body = await r2.wait_for(is_ctl("hangup"))
        assert body["call_info"]["reason"] == "done"
        for inbox in (dev, r2, r3):
            await inbox.close()
    status, resp = await bridged.get("/api/calls?household_number=101")
    assert status == 200
    assert resp["data"][0]["call_id"] == call_id
    assert resp["data"][0]["status"] == "ended"
    assert resp["data"][0]["end_reason"] == "hangup"
    assert resp["data"][0]["target_resident_ids"] == ["2", "3"]
    events = [(e["actor"], e["action"], e["to_state"]) for e in bridged.svc.store.call_events(call_id)]
    assert events == [("device:1", "initiated", "ringing"), ("resident:2", "answered", "connected"),
                      ("device:1", "hangup", "ended")]
    mine = {rid: bridged.svc.store.resident_calls(rid, False, 10) for rid in ("2", "3")}  # per-resident history
    assert [(c["call_id"], c["outcome"]) for c in mine["2"]] == [(call_id, "answered")]
    assert [(c["call_id"], c["outcome"]) for c in mine["3"]] == [(call_id, "answered_elsewhere")]
    assert bridged.svc.store.unseen_missed("3") == 0
    assert bridged.svc.store.last_missed("3") is None
    # the rows are really in PostgreSQL, seen from another connection
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT status, end_reason, resident_id FROM calls WHERE call_id = %s",
                           [call_id]).fetchone()
        assert row == ("ended", "hangup", "2")
        version = conn.execute("SELECT version FROM schema_version WHERE name = 'intercom'").fetchone()
        assert version == (latest(POSTGRES_INTERCOM),)
    # directory writes (REST admin) go to PostgreSQL too: a new household survives a second store on the database
    status, _ = await bridged.post("/api/admin/households", {"household_number": "909", "name": "pg"})
    second = PgStore(pg_url)
    try:
        assert status in (200, 201)
        assert second.get("households", "909") is not None
        assert second.get_call(call_id) is not None
        assert second.active_calls() == []
    finally:
        second.close()


async def test_a_restarted_instance_recovers_a_ringing_call_from_postgres(tmp_path: Path, mosquitto: Mosquitto,
                                                                          pg_url: str) -> None:  # noqa: F811
    """A call left ringing by a stopped instance is recovered from PostgreSQL by the next one, in another data
    dir (nothing on local disk), and its ring timeout still fires."""
    url = f"mqtt://127.0.0.1:{mosquitto.port}"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first = BridgedServer(make_settings(tmp_path / "a", store={"url": pg_url}, calls={"ring_timeout_s": 1.5}), url)
    await first.start()
    http = aiohttp.ClientSession()
    try:
        call_id = (await Harness(first, http).start_call("1"))["call_id"]  # type: ignore[arg-type]
        assert first.services is not None
        first.services.calls.close()  # stop without ending the call (timers cancelled), as a crash would
        await first.stop()
        second = BridgedServer(make_settings(tmp_path / "b", store={"url": pg_url}, calls={"ring_timeout_s": 1.5}),
                               url)
        async with Harness(second, http).mqtt("device-1") as dev_c:  # type: ignore[arg-type]
            await dev_c.subscribe("devices/1/#", qos=1)
            dev = Inbox(dev_c)
            await second.start()
            try:
                assert second.services is not None
                assert second.services.calls.active_count == 1
                _, body = await dev.wait_for(is_ctl("timeout"), timeout=10)
                assert body["call_info"]["call_id"] == call_id
                await dev.close()
                store = second.services.store
                assert store.last_missed("2") == call_id
                assert store.unseen_missed("2") == 1
            finally:
                await second.stop()
    finally:
        await http.close()


def test_translation_of_the_sqlite_dialect() -> None:
    assert translate("SELECT * FROM [calls] WHERE [status] = ? AND x LIKE ? ESCAPE '\\'") == \
        "SELECT * FROM \"calls\" WHERE \"status\" = %s AND x LIKE %s ESCAPE '\\'"
    assert translate("SELECT '?' , 'a[b]' FROM t WHERE c = ?") == "SELECT '?' , 'a[b]' FROM t WHERE c = %s"
    assert translate("INSERT INTO audit (ts) VALUES (:ts)", named=True) == "INSERT INTO audit (ts) VALUES (%(ts)s)"
    assert translate("INSERT OR REPLACE INTO resident_calls (resident_id, call_id, seen) VALUES (?, ?, ?)") == (
        "INSERT INTO resident_calls (resident_id, call_id, seen) VALUES (%s, %s, %s)"
        " ON CONFLICT (resident_id, call_id) DO UPDATE SET seen = EXCLUDED.seen")


def test_store_url_refuses_another_scheme_and_a_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scheme"):
        make_settings(tmp_path, store={"url": "mysql://h/db"})
    with pytest.raises(ConfigError, match="PGPASSWORD"):
        make_settings(tmp_path, store={"url": "postgresql://u:secret@h/db"})


async def test_a_database_serves_one_site_another_sites_instance_is_refused(tmp_path: Path, mosquitto: Mosquitto,
                                                                           pg_url: str) -> None:  # noqa: F811
    """The tables have no site column: site b's instance on site a's database would recover a's calls."""
    url = f"mqtt://127.0.0.1:{mosquitto.port}"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = BridgedServer(make_settings(tmp_path / "a", store={"url": pg_url}), url, site_id="a")
    await a.start()
    try:
        b = BridgedServer(make_settings(tmp_path / "b", store={"url": pg_url}), url, site_id="b")
        with pytest.raises(StorageError, match="holds site 'a', not 'b'"):
            await b.start()
        await b.stop()
    finally:
        await a.stop()


def test_every_store_method_runs_on_postgres(pg_url: str) -> None:  # noqa: F811
    """Each Store method's SQL, through the adapter, on a real PostgreSQL (the dialect seams, one by one)."""
    from broker.core.audit import Audit

    store = PgStore(pg_url)
    try:
        store.put("households", {"household_number": "101", "name": "a", "created_at": 1.0})
        store.put("residents", {"resident_id": "2", "household_number": "101", "name": "r", "token_hash": "x",
                                "created_at": 1.0})
        store.put("devices", {"device_id": "1", "household_number": "101", "name": "d", "token_hash": "y",
                              "created_at": 1.0, "kind": "lobby", "households": ["101"], "emergency": True})
        store.upsert("households", {"household_number": "101", "name": "b"})
        assert store.get("households", "101") == {"household_number": "101", "name": "b", "created_at": 1.0}
        assert store.get("devices", "1")["households"] == ["101"]  # type: ignore[index]
        assert [r["resident_id"] for r in store.rows("residents", "101")] == ["2"]
        store.update("residents", "2", {"name": "renamed"})
        store.set_token_hash("residents", "2", "z")
        assert store.get("residents", "2")["token_hash"] == "z"  # type: ignore[index]
        store.put_named_token({"resident_id": "2", "name": "phone", "token_hash": "h", "created_at": 2.0})
        assert [t["name"] for t in store.named_tokens("2")] == ["phone"]
        assert store.delete_named_token("2", "phone")
        assert not store.delete_named_token("2", "phone")
        store.put_setting("dnd_settings", {"scope": "resident", "subject": "2", "enabled": 1, "schedule": None,
                                           "updated_at": 3.0})
        store.put_setting("dnd_settings", {"scope": "resident", "subject": "2", "enabled": 0, "schedule": None,
                                           "updated_at": 4.0})
        assert [r["enabled"] for r in store.settings_rows("dnd_settings")] == [0]
        store.put_setting("household_forwarding", {"household_number": "101", "forward_to": '["2"]',
                                                   "forward_after_s": 5.0, "updated_at": 1.0})
        assert len(store.settings_rows("household_forwarding")) == 1
        store.put_status({"device_id": "1", "online": True, "battery": 80, "properties": {"fw": "1"},
                          "updated_at": 10.0})
        store.put_status({"device_id": "1", "online": False, "battery": 80, "properties": {}, "updated_at": 20.0})
        assert store.get_status("1")["online"] is False  # type: ignore[index]
        assert [h["online"] for h in store.status_history("1", 15.0)] == [True, False]
        store.add_system_message({"type": "t", "level": "info", "message": "m", "data": {"k": 1}, "timestamp": 1})
        event_id = store.add_door_event({"ts": 1.0, "device_id": "1", "household_number": "101", "relay": 1,
                                         "by": "resident:2", "command_id": "c1", "outcome": "pending"})
        store.update_door_event(event_id, {"outcome": "opened", "acked_at": 2.0})
        assert store.door_event_by_command("c1")["outcome"] == "opened"  # type: ignore[index]
        assert [e["id"] for e in store.door_events({"device_id": "1"}, 10)] == [event_id]
        assert store.list_calls({"household_number": "101"}, 10, search="call-%_\\") == []
        audit = Audit(store)
        audit.record("admin", "create", "household:101", "ok", detail={"x": 1})
        rows, _ = audit.query(None, None, 10, None)
        assert [(r["actor"], r["detail"]) for r in rows] == [("admin", {"x": 1})]
        assert store.mark_missed_seen("2") == 0
        assert store.calls_with_snapshot_before(1e12) == []
        assert store.delete("residents", "2")
        assert store.get("residents", "2") is None
    finally:
        store.close()


def test_a_lost_connection_fails_one_write_and_the_next_reconnects(pg_url: str) -> None:  # noqa: F811
    """A PostgreSQL backend killed under the store (as a server restart does): the write that finds it lost
    fails as a StoreError (nothing half-written), the next one runs on a new connection."""
    from broker.core.store import StoreError

    store = PgStore(pg_url)
    try:
        store.put("households", {"household_number": "1", "name": "a", "created_at": 1.0})
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname ="
                                   " current_database() AND pid <> pg_backend_pid()").fetchall()
        assert killed
        with pytest.raises(StoreError):
            store.put("households", {"household_number": "2", "name": "b", "created_at": 1.0})
        store.put("households", {"household_number": "3", "name": "c", "created_at": 1.0})
        assert [r["household_number"] for r in store.rows("households")] == ["1", "3"]
    finally:
        store.close()
