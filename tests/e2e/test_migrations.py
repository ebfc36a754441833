"""Schema versions: files made by the first release are upgraded with every row kept; a newer file is refused.

The old DDL below is what the first release of each file created (intercom.db: commit e9d61b6,
broker/store.py via sqlite-utils; sessions.db: commit f932fac, broker/session_persistence.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker.core.store import Store
from broker.db_open import StorageError
from broker.migrations import INTERCOM, SESSIONS, Migration, latest, upgrade
from broker.mqtt.session_db import SessionDB
from tests.support.process import ServerProcess

FIRST_INTERCOM_DDL = """
CREATE TABLE [households] ([household_number] TEXT PRIMARY KEY, [name] TEXT, [created_at] FLOAT);
CREATE TABLE [residents] ([resident_id] TEXT PRIMARY KEY, [household_number] TEXT, [name] TEXT,
    [token_hash] TEXT, [created_at] FLOAT);
CREATE INDEX [idx_residents_household_number] ON [residents] ([household_number]);
CREATE TABLE [devices] ([device_id] TEXT PRIMARY KEY, [household_number] TEXT, [name] TEXT, [token_hash] TEXT,
    [created_at] FLOAT);
CREATE INDEX [idx_devices_household_number] ON [devices] ([household_number]);
CREATE TABLE [calls] ([call_id] TEXT PRIMARY KEY, [device_id] TEXT, [household_number] TEXT,
    [target_resident_ids] TEXT, [status] TEXT, [resident_id] TEXT, [end_reason] TEXT, [start_time] FLOAT,
    [connected_at] FLOAT, [last_activity] FLOAT, [ended_at] FLOAT, [ring_timeout_s] FLOAT, [max_duration_s] FLOAT,
    [ringing] TEXT, [last_actions] TEXT);
CREATE INDEX [idx_calls_status] ON [calls] ([status]);
CREATE INDEX [idx_calls_household_number_start_time] ON [calls] ([household_number], [start_time]);
CREATE INDEX [idx_calls_device_id_start_time] ON [calls] ([device_id], [start_time]);
CREATE TABLE [call_events] ([id] INTEGER PRIMARY KEY, [call_id] TEXT, [ts] FLOAT, [actor] TEXT, [action] TEXT,
    [reason] TEXT, [from_state] TEXT, [to_state] TEXT);
CREATE INDEX [idx_call_events_call_id] ON [call_events] ([call_id]);
CREATE TABLE [device_status] ([device_id] TEXT PRIMARY KEY, [online] INTEGER, [battery] INTEGER,
    [properties] TEXT, [updated_at] FLOAT);
CREATE TABLE [system_messages] ([id] INTEGER PRIMARY KEY, [type] TEXT, [level] TEXT, [message] TEXT, [data] TEXT,
    [timestamp] INTEGER);
"""

FIRST_SESSIONS_DDL = """
CREATE TABLE IF NOT EXISTS mqtt_sessions (client_id TEXT PRIMARY KEY, username TEXT, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS mqtt_subscriptions (
    client_id TEXT NOT NULL, topic TEXT NOT NULL, qos INTEGER NOT NULL, PRIMARY KEY (client_id, topic));
CREATE TABLE IF NOT EXISTS mqtt_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT, client_id TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS mqtt_queue_client ON mqtt_queue (client_id, id);
CREATE TABLE IF NOT EXISTS mqtt_inflight (
    client_id TEXT NOT NULL, packet_id INTEGER NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, qos INTEGER NOT NULL, released INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, packet_id));
CREATE TABLE IF NOT EXISTS mqtt_retained (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL);
"""

# What later unversioned releases added (commits 880e34f, b3856fc; sessions.db e0ac1e7 and the MQTT 5 columns),
# each table and column in the DDL of the release that added it.
LATER_INTERCOM_DDL = """
ALTER TABLE [devices] ADD COLUMN [kind] TEXT;
ALTER TABLE [devices] ADD COLUMN [households] TEXT;
ALTER TABLE [calls] ADD COLUMN [snapshot_at] FLOAT;
ALTER TABLE [calls] ADD COLUMN [door_opened_by] TEXT;
ALTER TABLE [calls] ADD COLUMN [door_opened_at] FLOAT;
CREATE INDEX calls_snapshot_at ON calls (snapshot_at) WHERE snapshot_at IS NOT NULL;
CREATE TABLE [door_events] ([id] INTEGER PRIMARY KEY, [ts] FLOAT, [device_id] TEXT, [household_number] TEXT,
    [relay] INTEGER, [by] TEXT, [call_id] TEXT, [command_id] TEXT, [outcome] TEXT, [error] TEXT, [acked_at] FLOAT);
ALTER TABLE [devices] ADD COLUMN [emergency] INTEGER;
ALTER TABLE [call_events] ADD COLUMN [client_id] TEXT;
CREATE TABLE [resident_calls] ([resident_id] TEXT, [call_id] TEXT, [start_time] FLOAT, [outcome] TEXT,
    [seen] INTEGER, PRIMARY KEY ([resident_id], [call_id]));
CREATE TABLE [dnd_settings] ([scope] TEXT, [subject] TEXT, [enabled] INTEGER, [schedule] TEXT, [updated_at] FLOAT,
    PRIMARY KEY ([scope], [subject]));
CREATE TABLE [household_forwarding] ([household_number] TEXT PRIMARY KEY, [forward_to] TEXT,
    [forward_after_s] FLOAT, [updated_at] FLOAT);
"""
LATER_SESSIONS_DDL = """
CREATE TABLE mqtt_incoming (client_id TEXT NOT NULL, packet_id INTEGER NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, retain INTEGER NOT NULL, PRIMARY KEY (client_id, packet_id));
ALTER TABLE mqtt_sessions ADD COLUMN expiry_s INTEGER;
ALTER TABLE mqtt_subscriptions ADD COLUMN options INTEGER;
ALTER TABLE mqtt_subscriptions ADD COLUMN sub_id INTEGER;
"""

INTERCOM_ROWS: dict[str, list[tuple[Any, ...]]] = {
    "households": [(f"h{i}", f"Flat {i}", 1000.0 + i) for i in range(5)],
    "residents": [(f"r{i}", f"h{i % 5}", f"Resident {i}", f"$7$1000$salt{i}$hash{i}", 1100.0 + i) for i in range(10)],
    "devices": [(f"d{i}", f"h{i}", f"Door {i}", f"$7$1000$dsalt{i}$dhash{i}", 1200.0 + i) for i in range(5)],
    "calls": [(f"c{i}", f"d{i % 5}", f"h{i % 5}", '["r0"]', "ended", "r0", "hangup", 2000.0 + i, 2001.0 + i,
               2010.0 + i, 2010.0 + i, 30.0, 600.0, "[]", "{}") for i in range(20)],
    "call_events": [(i + 1, f"c{i % 20}", 2000.0 + i, "device:d0", "call", None, "new", "ringing")
                    for i in range(40)],
    "device_status": [(f"d{i}", i % 2, 50 + i, '{"fw": "1.0"}', 3000.0 + i) for i in range(5)],
    "system_messages": [(i + 1, "info", "info", f"message {i}", "{}", 4000 + i) for i in range(3)],
}
SESSION_ROWS: dict[str, list[tuple[Any, ...]]] = {
    "mqtt_sessions": [(f"client-{i}", f"user{i}", 5000.0 + i) for i in range(4)],
    "mqtt_subscriptions": [(f"client-{i}", f"users/r{i}/#", 1) for i in range(4)],
    "mqtt_queue": [(i + 1, f"client-{i % 4}", f"users/r{i % 4}/x", f"payload {i}".encode(), 1) for i in range(8)],
    "mqtt_inflight": [(f"client-{i}", 10 + i, i, f"users/r{i}/y", b"inflight", 1, 0) for i in range(2)],
    "mqtt_retained": [(f"site/notice/{i}", f"retained {i}".encode(), 1) for i in range(3)],
}


def _build(path: Path, ddl: str, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(ddl)
        for table, values in rows.items():
            db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(values[0]))})", values)
        db.commit()


def _old_columns(path: Path, table: str, width: int) -> list[tuple[Any, ...]]:
    """The table's first `width` columns (the ones the old DDL had), in primary-key order."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        names = [r[1] for r in db.execute(f"PRAGMA table_info({table})")][:width]
        return [tuple(r) for r in db.execute(f"SELECT {', '.join(names)} FROM {table} ORDER BY 1, 2")]


def _user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_first_release_intercom_db_is_upgraded_with_every_row(tmp_path: Path) -> None:
    """A first-release intercom.db reaches the newest version; every row of every table is still there."""
    path = tmp_path / "intercom.db"
    _build(path, FIRST_INTERCOM_DDL, INTERCOM_ROWS)
    store = Store(path)
    try:
        assert store.get("devices", "d3") is not None
        # the first release had no kinds: its devices stay unset (the seed's rule: any household of the site)
        assert store.get("devices", "d3")["kind"] is None  # type: ignore[index]
        assert len(store.list_calls({}, limit=100)) == 20
    finally:
        store.close()
    assert _user_version(path) == latest(INTERCOM) > 0
    for table, values in INTERCOM_ROWS.items():
        assert _old_columns(path, table, len(values[0])) == sorted(values, key=lambda r: (r[0], r[1])), table
    copies = list(tmp_path.glob("intercom.db.v0-*.bak"))
    assert len(copies) == 1
    assert _user_version(copies[0]) == 0
    assert _old_columns(copies[0], "calls", 15) == _old_columns(path, "calls", 15)
    Store(path).close()  # already current: no second copy
    assert len(list(tmp_path.glob("intercom.db.v0-*.bak"))) == 1


def test_first_release_sessions_db_is_upgraded_with_every_row(tmp_path: Path) -> None:
    """A first-release sessions.db reaches the newest version; sessions, queue and retained rows survive."""
    path = tmp_path / "sessions.db"
    _build(path, FIRST_SESSIONS_DDL, SESSION_ROWS)
    db = SessionDB(path)
    try:
        assert db.conn.execute("SELECT COUNT(*) FROM mqtt_queue").fetchone()[0] == 8
    finally:
        db.conn.close()
    assert _user_version(path) == latest(SESSIONS) > 0
    for table, values in SESSION_ROWS.items():
        assert _old_columns(path, table, len(values[0])) == sorted(values, key=lambda r: (r[0], r[1])), table
    assert len(list(tmp_path.glob("sessions.db.v0-*.bak"))) == 1


def test_last_unversioned_files_keep_device_kinds_settings_and_qos2_state(tmp_path: Path) -> None:
    """Files grown by every unversioned release (lobby panels, door events, DND, QoS 2 state) upgrade intact."""
    intercom, sessions = tmp_path / "intercom.db", tmp_path / "sessions.db"
    later = {
        "devices": [(f"L{i}", "gate", "Lobby", "$7$x", 1.0, "lobby", '["h0", "h1"]', i % 2) for i in range(3)],
        "door_events": [(i + 1, 10.0 + i, "L0", "h0", 1, "resident:r1", "c1", f"cmd{i}", "opened", None, 11.0 + i)
                        for i in range(4)],
        "resident_calls": [("r0", f"c{i}", 2000.0 + i, "missed", 0) for i in range(3)],
        "dnd_settings": [("resident", "r0", 1, '[["22:00", "07:00"]]', 5.0)],
        "household_forwarding": [("h1", '["r9"]', 20.0, 6.0)],
    }
    _build(intercom, FIRST_INTERCOM_DDL + LATER_INTERCOM_DDL, later)
    _build(sessions, FIRST_SESSIONS_DDL + LATER_SESSIONS_DDL,
           {"mqtt_incoming": [("client-0", 7, "users/r0/x", b"held", 0)],
            "mqtt_sessions": [("client-0", "r0", 1.0, 3600)]})
    store = Store(intercom)
    try:
        assert store.get("devices", "L0")["kind"] == "lobby"  # type: ignore[index]
        assert store.get("devices", "L0")["households"] == ["h0", "h1"]  # type: ignore[index]
    finally:
        store.close()
    SessionDB(sessions).conn.close()
    for table, values in later.items():
        assert _old_columns(intercom, table, len(values[0])) == sorted(values, key=lambda r: (r[0], r[1])), table
    assert _old_columns(sessions, "mqtt_incoming", 5) == [("client-0", 7, "users/r0/x", b"held", 0)]
    assert _old_columns(sessions, "mqtt_sessions", 4) == [("client-0", "r0", 1.0, 3600)]
    assert (_user_version(intercom), _user_version(sessions)) == (latest(INTERCOM), latest(SESSIONS))


def test_failed_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """A migration that fails half way rolls back the earlier steps too, and the version stays."""
    path = tmp_path / "x.db"
    steps = (Migration(1, "one table", "CREATE TABLE a (x INTEGER);"),
             Migration(2, "broken", "CREATE TABLE b (y INTEGER); INSERT INTO nowhere VALUES (1);"))
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        with pytest.raises(sqlite3.OperationalError):
            upgrade(db, path, steps)
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == []


def test_a_newer_file_is_refused_with_one_line(tmp_path: Path) -> None:
    """A file from a newer release: the server exits 1 with one line naming both versions, the file untouched."""
    data = tmp_path / "data"
    data.mkdir()
    path = data / "intercom.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 999")
    with pytest.raises(StorageError, match=f"version 999, newer than this release's {latest(INTERCOM)}"):
        Store(path)
    code, err = ServerProcess(tmp_path, data_dir=data).run_to_exit()
    # the start-up INFO lines (which event loop) are not the refusal: it is the one line that is not INFO
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line]
    assert code == 1
    assert len(lines) == 1, err
    assert "999" in lines[0], err
    assert str(latest(INTERCOM)) in lines[0], err
    assert _user_version(path) == 999
