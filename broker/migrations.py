"""Numbered schema migrations for `intercom.db` and `sessions.db`, versioned with `PRAGMA user_version`.

A feature that changes a schema appends one `Migration` row to `INTERCOM` or `SESSIONS` (never edits an
earlier row: files in the field already ran it). `upgrade` runs the missing rows in one IMMEDIATE
transaction together with the new `user_version`, so a failed upgrade leaves the file exactly as it was;
before touching a file that holds data it copies it with sqlite's online-backup API to
`<name>.v<old>-<UTC time>.bak`. A file whose version is newer than the code is refused: an older release
would otherwise run on columns it does not know and silently drop them.

Version 1 is the schema as it stood when versions began. Files made before that (version 0) were grown
ad hoc by every release since the first, so version 1 is idempotent: it creates what is missing and adds
missing columns, whatever stage the file is at.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlite_utils import Database

from broker.db_open import StorageError

__all__ = ["INTERCOM", "POSTGRES_INTERCOM", "SESSIONS", "Migration", "SchemaTooNew", "latest", "upgrade",
           "upgrade_postgres", "version_of"]

log = logging.getLogger("intercom.store")


class SchemaTooNew(StorageError):
    """The file was written by a newer release; the message names both versions."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None] | str  # a callable, or SQL run with executescript semantics


def latest(migrations: Sequence[Migration]) -> int:
    return migrations[-1].version if migrations else 0


def version_of(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def upgrade(conn: sqlite3.Connection, path: Path | None, migrations: Sequence[Migration]) -> int:
    """Bring the file to the newest version in one transaction (after a backup copy); returns that version."""
    _check_sequence(migrations)
    target, have = latest(migrations), version_of(conn)
    name = str(path) if path is not None else ":memory:"
    if have > target:
        raise SchemaTooNew(f"database {name} has schema version {have}, newer than this release's {target}: "
                           "run the release that wrote it, or restore a backup made by this one")
    if have == target:
        return have
    if path is not None and _holds_data(conn):
        copy = backup_copy(conn, path, have)
        log.warning("upgrading %s from schema version %d to %d (copy of the old file: %s)", name, have, target, copy)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for step in migrations:
            if step.version > have:
                _run(conn, step)
        conn.execute(f"PRAGMA user_version = {target}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return target


def backup_copy(conn: sqlite3.Connection, path: Path, version: int) -> Path:
    copy = path.with_name(f"{path.name}.v{version}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.bak")
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    dest = sqlite3.connect(str(copy))
    try:
        conn.backup(dest)
    finally:
        dest.close()
    return copy


def _holds_data(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone() is not None


def _run(conn: sqlite3.Connection, step: Migration) -> None:
    if callable(step.apply):
        step.apply(conn)
        return
    # executescript would COMMIT the open transaction first; run the statements one by one instead
    for statement in _statements(step.apply):
        conn.execute(statement)


def _statements(script: str) -> list[str]:
    """Split at each `;` that ends a complete statement (not one inside a string literal)."""
    out, buf = [], ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n\t;"):
                out.append(buf.strip())
            buf = ""
    return out


def _check_sequence(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1, 2, 3, ... in order, got {versions}")


# intercom.db ----------------------------------------------------------------------------------------------

def _intercom_v1(conn: sqlite3.Connection) -> None:
    """The directory, calls, events, status, system messages, doors, snapshots, DND, forwarding, per-resident
    history: created if missing, columns added to tables made before them."""
    db = Database(conn)
    t = db.table
    t("households").create(
        {"household_number": str, "name": str, "created_at": float}, pk="household_number", if_not_exists=True)
    for table, pk in (("residents", "resident_id"), ("devices", "device_id")):
        t(table).create({pk: str, "household_number": str, "name": str, "token_hash": str, "created_at": float},
                        pk=pk, if_not_exists=True)
        t(table).create_index(["household_number"], if_not_exists=True)
    t("calls").create(
        {"call_id": str, "device_id": str, "household_number": str, "target_resident_ids": str, "status": str,
         "resident_id": str, "end_reason": str, "start_time": float, "connected_at": float, "last_activity": float,
         "ended_at": float, "ring_timeout_s": float, "max_duration_s": float, "ringing": str, "last_actions": str},
        pk="call_id", if_not_exists=True)
    t("calls").create_index(["status"], if_not_exists=True)
    t("calls").create_index(["household_number", "start_time"], if_not_exists=True)
    t("calls").create_index(["device_id", "start_time"], if_not_exists=True)
    t("call_events").create({"id": int, "call_id": str, "ts": float, "actor": str, "action": str, "reason": str,
                             "from_state": str, "to_state": str}, pk="id", if_not_exists=True)
    t("call_events").create_index(["call_id"], if_not_exists=True)
    t("device_status").create({"device_id": str, "online": int, "battery": int, "properties": str,
                               "updated_at": float}, pk="device_id", if_not_exists=True)
    t("system_messages").create({"id": int, "type": str, "level": str, "message": str, "data": str,
                                 "timestamp": int}, pk="id", if_not_exists=True)
    # doors and snapshots
    _add_missing(db, "devices", {"kind": str, "households": str, "emergency": int})
    _add_missing(db, "calls", {"snapshot_at": float, "door_opened_by": str, "door_opened_at": float,
                               "dnd_resident_ids": str, "forward_to": str, "forward_after_s": float,
                               "forwarded_at": float, "answered_client_id": str})
    _add_missing(db, "call_events", {"client_id": str})
    db.execute("CREATE INDEX IF NOT EXISTS calls_snapshot_at ON calls (snapshot_at) WHERE snapshot_at IS NOT NULL")
    t("door_events").create({"id": int, "ts": float, "device_id": str, "household_number": str, "relay": int,
                             "by": str, "call_id": str, "command_id": str, "outcome": str, "error": str,
                             "acked_at": float}, pk="id", if_not_exists=True)
    for columns in (["device_id", "ts"], ["household_number", "ts"], ["command_id"]):
        t("door_events").create_index(columns, if_not_exists=True)
    # per-resident history: one row per (resident, ended call); `seen` = 0 only for an unseen missed call
    t("resident_calls").create({"resident_id": str, "call_id": str, "start_time": float, "outcome": str,
                                "seen": int}, pk=("resident_id", "call_id"), if_not_exists=True)
    t("resident_calls").create_index(["resident_id", "start_time"], if_not_exists=True)
    t("resident_calls").create_index(["resident_id", "seen"], if_not_exists=True)
    # scope "resident" or "household"; schedule: JSON list of [from, to] "HH:MM" pairs, or null
    t("dnd_settings").create({"scope": str, "subject": str, "enabled": int, "schedule": str, "updated_at": float},
                             pk=("scope", "subject"), if_not_exists=True)
    # forward_to: JSON list of resident ids, or null (= the site's)
    t("household_forwarding").create({"household_number": str, "forward_to": str, "forward_after_s": float,
                                      "updated_at": float}, pk="household_number", if_not_exists=True)


def _add_missing(db: Database, table: str, columns: dict[str, type]) -> None:
    have = db.table(table).columns_dict
    for name, kind in columns.items():
        if name not in have:
            db.table(table).add_column(name, kind)


INTERCOM: tuple[Migration, ...] = (
    Migration(1, "schema as versions began (idempotent over every earlier file)", _intercom_v1),
    Migration(2, "calls: index on start_time for date ranges and retention; door_events: index on ts", """
        CREATE INDEX IF NOT EXISTS calls_start_time ON calls (start_time);
        CREATE INDEX IF NOT EXISTS door_events_ts ON door_events (ts);
    """),
    Migration(3, "device_status_history: online/offline and battery over time", """
        CREATE TABLE device_status_history (
            id INTEGER PRIMARY KEY, device_id TEXT NOT NULL, ts REAL NOT NULL, online INTEGER, battery INTEGER);
        CREATE INDEX device_status_history_device ON device_status_history (device_id, ts);
        CREATE INDEX device_status_history_ts ON device_status_history (ts);
    """),
    Migration(4, "resident_tokens: several named tokens per resident (one per phone or tablet)", """
        CREATE TABLE resident_tokens (
            resident_id TEXT NOT NULL, name TEXT NOT NULL, token_hash TEXT NOT NULL, created_at REAL NOT NULL,
            PRIMARY KEY (resident_id, name));
    """),
    Migration(5, "audit: admin changes, token issue and revocation, door unlocks, console sign-ins", """
        CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, actor TEXT NOT NULL,
            action TEXT NOT NULL, target TEXT, outcome TEXT NOT NULL, remote TEXT, detail TEXT);
        CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
    """),
)


# sessions.db ----------------------------------------------------------------------------------------------

_SESSIONS_V1 = """
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
CREATE TABLE IF NOT EXISTS mqtt_incoming (
    client_id TEXT NOT NULL, packet_id INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    retain INTEGER NOT NULL, PRIMARY KEY (client_id, packet_id));
"""
# MQTT 5 columns (NULL: a 3.1.1 session, subscription or message)
_SESSIONS_V1_COLUMNS = {"mqtt_sessions": ("expiry_s INTEGER",),
                        "mqtt_subscriptions": ("options INTEGER", "sub_id INTEGER"),
                        "mqtt_queue": ("props BLOB",), "mqtt_inflight": ("props BLOB",),
                        "mqtt_retained": ("props BLOB",), "mqtt_incoming": ("props BLOB",)}


def _sessions_v1(conn: sqlite3.Connection) -> None:
    for statement in _statements(_SESSIONS_V1):
        conn.execute(statement)
    for table, columns in _SESSIONS_V1_COLUMNS.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column.split()[0] not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


SESSIONS: tuple[Migration, ...] = (
    Migration(1, "sessions, subscriptions, queue, in-flight, retained, QoS 2 incoming, MQTT 5 columns",
              _sessions_v1),
)


# intercom.db's tables on PostgreSQL (store.url, broker/scale/pg_store.py) -------------------------------------
# The same tables and columns as INTERCOM's latest version, in PostgreSQL's types; the version lives in
# `schema_version` (no user_version there). A later change appends a row here as well as to INTERCOM.

class _Conn(Protocol):
    def execute(self, sql: str, params: Any = None) -> Any: ...


POSTGRES_INTERCOM: tuple[Migration, ...] = (
    Migration(1, "the schema of INTERCOM version 5", """
        CREATE TABLE households (household_number TEXT PRIMARY KEY, name TEXT, created_at DOUBLE PRECISION);
        CREATE TABLE residents (resident_id TEXT PRIMARY KEY, household_number TEXT, name TEXT, token_hash TEXT,
            created_at DOUBLE PRECISION);
        CREATE INDEX residents_household_number ON residents (household_number);
        CREATE TABLE devices (device_id TEXT PRIMARY KEY, household_number TEXT, name TEXT, token_hash TEXT,
            created_at DOUBLE PRECISION, kind TEXT, households TEXT, emergency BIGINT);
        CREATE INDEX devices_household_number ON devices (household_number);
        CREATE TABLE calls (call_id TEXT PRIMARY KEY, device_id TEXT, household_number TEXT, target_resident_ids TEXT,
            status TEXT, resident_id TEXT, end_reason TEXT, start_time DOUBLE PRECISION, connected_at DOUBLE PRECISION,
            last_activity DOUBLE PRECISION, ended_at DOUBLE PRECISION, ring_timeout_s DOUBLE PRECISION,
            max_duration_s DOUBLE PRECISION, ringing TEXT, last_actions TEXT, snapshot_at DOUBLE PRECISION,
            door_opened_by TEXT, door_opened_at DOUBLE PRECISION, dnd_resident_ids TEXT, forward_to TEXT,
            forward_after_s DOUBLE PRECISION, forwarded_at DOUBLE PRECISION, answered_client_id TEXT);
        CREATE INDEX calls_status ON calls (status);
        CREATE INDEX calls_household_start ON calls (household_number, start_time);
        CREATE INDEX calls_device_start ON calls (device_id, start_time);
        CREATE INDEX calls_start_time ON calls (start_time);
        CREATE INDEX calls_snapshot_at ON calls (snapshot_at) WHERE snapshot_at IS NOT NULL;
        CREATE TABLE call_events (id BIGSERIAL PRIMARY KEY, call_id TEXT, ts DOUBLE PRECISION, actor TEXT, action TEXT,
            reason TEXT, from_state TEXT, to_state TEXT, client_id TEXT);
        CREATE INDEX call_events_call_id ON call_events (call_id);
        CREATE TABLE device_status (device_id TEXT PRIMARY KEY, online BIGINT, battery BIGINT, properties TEXT,
            updated_at DOUBLE PRECISION);
        CREATE TABLE system_messages (id BIGSERIAL PRIMARY KEY, type TEXT, level TEXT, message TEXT, data TEXT,
            "timestamp" BIGINT);
        CREATE TABLE door_events (id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION, device_id TEXT,
            household_number TEXT, relay BIGINT, "by" TEXT, call_id TEXT, command_id TEXT, outcome TEXT, error TEXT,
            acked_at DOUBLE PRECISION);
        CREATE INDEX door_events_device_ts ON door_events (device_id, ts);
        CREATE INDEX door_events_household_ts ON door_events (household_number, ts);
        CREATE INDEX door_events_command_id ON door_events (command_id);
        CREATE INDEX door_events_ts ON door_events (ts);
        CREATE TABLE resident_calls (resident_id TEXT, call_id TEXT, start_time DOUBLE PRECISION, outcome TEXT,
            seen BIGINT, seq BIGSERIAL, PRIMARY KEY (resident_id, call_id));
        CREATE INDEX resident_calls_start ON resident_calls (resident_id, start_time);
        CREATE INDEX resident_calls_seen ON resident_calls (resident_id, seen);
        CREATE TABLE dnd_settings (scope TEXT, subject TEXT, enabled BIGINT, schedule TEXT, updated_at DOUBLE PRECISION,
            PRIMARY KEY (scope, subject));
        CREATE TABLE household_forwarding (household_number TEXT PRIMARY KEY, forward_to TEXT,
            forward_after_s DOUBLE PRECISION, updated_at DOUBLE PRECISION);
        CREATE TABLE device_status_history (id BIGSERIAL PRIMARY KEY, device_id TEXT NOT NULL,
            ts DOUBLE PRECISION NOT NULL, online BIGINT, battery BIGINT);
        CREATE INDEX device_status_history_device ON device_status_history (device_id, ts);
        CREATE INDEX device_status_history_ts ON device_status_history (ts);
        CREATE TABLE resident_tokens (resident_id TEXT NOT NULL, name TEXT NOT NULL, token_hash TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (resident_id, name));
        CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL,
            action TEXT NOT NULL, target TEXT, outcome TEXT NOT NULL, remote TEXT, detail TEXT);
        CREATE INDEX audit_ts ON audit (ts);
    """),
    Migration(2, "site_leases: which call-service instance serves a site, until when; site_binding: the one site "
                 "whose directory and calls these tables hold (issue 23)", """
        CREATE TABLE site_leases (site_id TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
            acquired_at DOUBLE PRECISION NOT NULL);
        CREATE TABLE site_binding (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), site_id TEXT NOT NULL,
            bound_at DOUBLE PRECISION NOT NULL);
    """),
)

_PG_MIGRATION_LOCK = 0x1C0A_2301  # pg_advisory_xact_lock key: instances starting together migrate one at a time


def upgrade_postgres(conn: _Conn, migrations: Sequence[Migration], name: str = "intercom") -> int:
    """Bring the database to the newest version in one transaction; a newer one than the code is refused."""
    _check_sequence(migrations)
    target = latest(migrations)
    conn.execute("BEGIN")
    try:
        conn.execute(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (name TEXT PRIMARY KEY, version BIGINT NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version WHERE name = ?", [name]).fetchone()
        have = int(row[0]) if row else 0
        if have > target:
            raise SchemaTooNew(f"the PostgreSQL database has {name} schema version {have}, newer than this "
                               f"release's {target}: run the release that wrote it")
        for step in migrations:
            if step.version > have:
                if callable(step.apply):
                    raise TypeError("PostgreSQL migrations are SQL text")
                for statement in _statements(step.apply):
                    conn.execute(statement)
        if have < target:
            conn.execute("INSERT INTO schema_version (name, version) VALUES (?, ?) ON CONFLICT (name)"
                         " DO UPDATE SET version = EXCLUDED.version", [name, target])
            log.warning("upgraded the PostgreSQL %s schema from version %d to %d", name, have, target)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return target
