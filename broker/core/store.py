"""A thin synchronous store over sqlite-utils; call transitions use raw statements (`write_transition`).

The call service stages transitions in group transactions (broker/core/group_commit.py); every other write is a
transaction of its own, committed before it returns. Every write passes `gate` (broker/core/write_gate.py): while
another process holds the file locked, writes fail at once with StoreUnavailable instead of waiting.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError, Table

from broker import data_lock
from broker.core import fastjson
from broker.core.call_log import outcomes
from broker.core.states import CallSession, CallState, EndReason
from broker.core.write_gate import StoreError, StoreUnavailable, WriteGate
from broker.db_open import DatabaseDamaged, naming, open_db
from broker.migrations import INTERCOM, upgrade

__all__ = ["Store", "StoreError", "StoreUnavailable", "time_range", "write_transition"]

DIRECTORY = {"households": "household_number", "residents": "resident_id", "devices": "device_id"}


class Store:
    def __init__(self, path: Path | None, busy_timeout_ms: int = 100, check: bool = True) -> None:
        """Open (and quick_check) the file; a damaged or unusable one raises StorageError naming it."""
        self.path = path
        if path is None:
            self.db = Database(memory=True)
        else:
            data_lock.acquire(path.parent)  # refuses a data dir another running box uses
            # Refused rather than moved aside when damaged: the directory and tokens live here, and
            # starting empty would lock every client out.
            try:
                conn = open_db(path, busy_timeout_ms=busy_timeout_ms, check=check)
            except DatabaseDamaged as exc:
                data_lock.release(path.parent)
                raise DatabaseDamaged(f"{exc}: refusing to start; restore it from a backup, or move it away to "
                                      "start with an empty directory and call history") from exc
            except BaseException:
                data_lock.release(path.parent)
                raise
            self.db = Database(conn)
        # Called before any write outside a call transition, so it never shares (or rolls back) an open
        # group of staged transitions: the group commit (broker.core.group_commit) commits them first.
        self.before_write: Callable[[], None] | None = None
        self.gate = WriteGate(str(path or ":memory:"))  # every write, group commits included, passes it
        try:
            with naming(path or Path(":memory:")):
                upgrade(self.db.conn, path, INTERCOM)
        except BaseException:
            self.close()
            raise

    def _t(self, name: str) -> Table:
        return self.db.table(name)

    @contextmanager
    def _tx(self) -> Iterator[None]:
        if self.before_write is not None:
            self.before_write()
        self.gate.check()
        try:
            with self.db.conn:
                yield
        except sqlite3.Error as exc:
            raise self.gate.failed(exc) from exc
        self.gate.succeeded()

    # directory -----------------------------------------------------------------------------

    def put(self, kind: str, row: dict[str, Any], replace: bool = False) -> None:
        with self._tx():
            self._t(kind).insert(row, pk=DIRECTORY[kind], replace=replace)

    def upsert(self, kind: str, row: dict[str, Any]) -> None:
        with self._tx():
            self._t(kind).upsert(row, pk=DIRECTORY[kind])

    def get(self, kind: str, ident: str) -> dict[str, Any] | None:
        try:
            return _decode_member(dict(self._t(kind).get(ident)))
        except NotFoundError:
            return None

    def rows(self, kind: str, household_number: str | None = None) -> list[dict[str, Any]]:
        if household_number is None:
            return [_decode_member(r) for r in self._t(kind).rows_where(order_by=DIRECTORY[kind])]
        return [_decode_member(r) for r in
                self._t(kind).rows_where("household_number = ?", [household_number], order_by=DIRECTORY[kind])]

    def update(self, kind: str, ident: str, values: dict[str, Any]) -> None:
        with self._tx():
            self._t(kind).update(ident, values)

    def delete(self, kind: str, ident: str) -> bool:
        with self._tx():
            cur = self.db.execute(f"DELETE FROM [{kind}] WHERE [{DIRECTORY[kind]}] = ?", [ident])
            if kind == "residents":
                self.db.execute("DELETE FROM resident_tokens WHERE resident_id = ?", [ident])
        return cur.rowcount > 0

    def named_tokens(self, resident_id: str | None = None) -> list[dict[str, Any]]:
        where, params = ("resident_id = ?", [resident_id]) if resident_id is not None else (None, [])
        return list(self._t("resident_tokens").rows_where(where, params, order_by="resident_id, name"))

    def put_named_token(self, row: dict[str, Any]) -> None:
        with self._tx():
            self._t("resident_tokens").upsert(row, pk=("resident_id", "name"))

    def delete_named_token(self, resident_id: str, name: str) -> bool:
        with self._tx():
            cur = self.db.execute("DELETE FROM resident_tokens WHERE resident_id = ? AND name = ?", [resident_id, name])
        return cur.rowcount > 0

    def set_token_hash(self, kind: str, ident: str, token_hash: str) -> None:
        with self._tx():
            self._t(kind).update(ident, {"token_hash": token_hash})

    # calls ---------------------------------------------------------------------------------

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        try:
            return _decode_call(dict(self._t("calls").get(call_id)))
        except NotFoundError:
            return None

    def list_calls(self, where: dict[str, str], limit: int, active_only: bool = False, since: float | None = None,
                   until: float | None = None, after: tuple[float, str] | None = None,
                   search: str | None = None) -> list[dict[str, Any]]:
        """Newest first (start_time, then call_id): started in [since, until), and after the key `after`;
        `search`: a call id prefix, or a device, household or resident (answering or rung) id."""
        clauses = [f"[{k}] = ?" for k in where]
        params: list[Any] = list(where.values())
        if search:
            clauses.append("(call_id LIKE ? ESCAPE '\\' OR device_id = ? OR household_number = ? OR resident_id = ?"
                           " OR target_resident_ids LIKE ? ESCAPE '\\')")
            params.extend((_like(search) + "%", search, search, search, f"%{_like(fastjson.dumps(search))}%"))
        if active_only:
            clauses.append("status != 'ended'")
        time_range(clauses, params, "start_time", since, until)
        if after is not None:
            clauses.append("(start_time < ? OR (start_time = ? AND call_id < ?))")
            params.extend((after[0], after[0], after[1]))
        sql = " AND ".join(clauses) or None
        rows = self._t("calls").rows_where(sql, params, order_by="start_time DESC, call_id DESC", limit=limit)
        return [_decode_call(dict(r)) for r in rows]

    def active_calls(self) -> list[CallSession]:
        rows = self._t("calls").rows_where("status != 'ended'", order_by="start_time")
        return [call_from_row(_decode_call(dict(r))) for r in rows]

    def call_events(self, call_id: str) -> list[dict[str, Any]]:
        return list(self._t("call_events").rows_where("call_id = ?", [call_id], order_by="id"))

    # per-resident history, missed calls, DND, forwarding -------------------------------------

    def resident_calls(self, resident_id: str, missed_only: bool, limit: int) -> list[dict[str, Any]]:
        """A resident's ended calls, newest first: `calls` columns plus its `outcome` and `seen`."""
        missed = " AND rc.outcome = 'missed'" if missed_only else ""
        rows = self.db.execute(
            "SELECT c.*, rc.outcome AS outcome, rc.seen AS seen FROM resident_calls rc JOIN calls c"
            f" ON c.call_id = rc.call_id WHERE rc.resident_id = ?{missed} ORDER BY rc.start_time DESC LIMIT ?",
            [resident_id, limit])
        names = [d[0] for d in rows.description]
        return [_decode_call(dict(zip(names, r, strict=True))) for r in rows.fetchall()]

    def unseen_missed(self, resident_id: str) -> int:
        """Unseen missed calls (`seen` = 0 only on those: a covering-index count). Sees staged transitions too."""
        return int(self.db.conn.execute("SELECT COUNT(*) FROM resident_calls WHERE resident_id = ? AND seen = 0",
                                        [resident_id]).fetchone()[0])

    def last_missed(self, resident_id: str) -> str | None:
        """The id of the call this resident missed last (the last one to end)."""
        row = self.db.conn.execute("SELECT call_id FROM resident_calls WHERE resident_id = ? AND outcome = 'missed'"
                                   " ORDER BY rowid DESC LIMIT 1", [resident_id]).fetchone()
        return row[0] if row else None

    def mark_missed_seen(self, resident_id: str) -> int:
        with self._tx():
            cur = self.db.execute("UPDATE resident_calls SET seen = 1 WHERE resident_id = ? AND seen = 0",
                                  [resident_id])
        return cur.rowcount

    def settings_rows(self, table: str) -> list[dict[str, Any]]:
        return list(self._t(table).rows)

    def put_setting(self, table: str, row: dict[str, Any]) -> None:
        with self._tx():
            self._t(table).upsert(row, pk=("scope", "subject") if table == "dnd_settings" else "household_number")

    # status and system messages --------------------------------------------------------------

    def put_status(self, row: dict[str, Any]) -> None:
        """The device's current status; a change of online or battery also adds a `device_status_history` row."""
        before = self.db.conn.execute("SELECT online, battery FROM device_status WHERE device_id = ?",
                                      [row["device_id"]]).fetchone()
        online = None if row.get("online") is None else int(row["online"])
        with self._tx():
            self._t("device_status").upsert({**row, "properties": json.dumps(row["properties"])}, pk="device_id")
            if before is None or (before[0], before[1]) != (online, row.get("battery")):
                self.db.conn.execute("INSERT INTO device_status_history (device_id, ts, online, battery)"
                                     " VALUES (?, ?, ?, ?)", [row["device_id"], row["updated_at"], online,
                                                              row.get("battery")])

    def status_history(self, device_id: str, since: float) -> list[dict[str, Any]]:
        """The device's online/battery changes since `since`, oldest first, after the last one before it (the
        state `since` began in), if any."""
        rows = self.db.conn.execute(
            "SELECT * FROM (SELECT ts, online, battery, id FROM device_status_history WHERE device_id = ? AND ts < ?"
            " ORDER BY ts DESC, id DESC LIMIT 1) UNION ALL SELECT ts, online, battery, id FROM device_status_history"
            " WHERE device_id = ? AND ts >= ? ORDER BY 1, 4", [device_id, since, device_id, since]).fetchall()
        return [{"ts": ts, "online": None if on is None else bool(on), "battery": bat} for ts, on, bat, _ in rows]

    def get_status(self, device_id: str) -> dict[str, Any] | None:
        try:
            row = dict(self._t("device_status").get(device_id))
        except NotFoundError:
            return None
        return {**row, "online": bool(row["online"]), "properties": json.loads(row["properties"] or "{}")}

    def add_system_message(self, row: dict[str, Any]) -> None:
        with self._tx():
            self._t("system_messages").insert({**row, "data": json.dumps(row["data"])})

    # door events and snapshots ---------------------------------------------------------------

    def add_door_event(self, row: dict[str, Any]) -> int:
        with self._tx():
            pk = self._t("door_events").insert(row).last_pk
        if pk is None:
            raise StoreError("door event was not stored")
        return int(pk)

    def update_door_event(self, event_id: int, values: dict[str, Any]) -> None:
        with self._tx():
            self._t("door_events").update(event_id, values)

    def door_event_by_command(self, command_id: str) -> dict[str, Any] | None:
        rows = list(self._t("door_events").rows_where("command_id = ?", [command_id], limit=1))
        return rows[0] if rows else None

    def door_events(self, where: dict[str, str], limit: int) -> list[dict[str, Any]]:
        sql = " AND ".join(f"[{k}] = ?" for k in where) or None
        return list(self._t("door_events").rows_where(sql, list(where.values()), order_by="id DESC", limit=limit))

    def set_call_fields(self, call_id: str, values: dict[str, Any]) -> None:
        """Columns outside the call's state (`snapshot_at`, `door_opened_*`): a transition never writes them."""
        with self._tx():
            self._t("calls").update(call_id, values)

    def calls_with_snapshot_before(self, cutoff: float) -> list[str]:
        rows = self.db.execute("SELECT call_id FROM calls WHERE snapshot_at IS NOT NULL AND snapshot_at < ?",
                               [cutoff]).fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        if self.before_write is not None:
            self.before_write()
        self.db.close()
        if self.path is not None:
            data_lock.release(self.path.parent)
            self.path = None


# The hot path of a call transition: raw prepared statements (sqlite3 caches them by text). A new call is
# one INSERT; a later transition updates only the columns a transition can change.
_CALL_COLUMNS = ("call_id", "device_id", "household_number", "target_resident_ids", "status", "resident_id",
                 "end_reason", "start_time", "connected_at", "last_activity", "ended_at", "ring_timeout_s",
                 "max_duration_s", "ringing", "last_actions", "dnd_resident_ids", "forward_to", "forward_after_s",
                 "forwarded_at", "answered_client_id")
_INSERT_CALL = f"INSERT INTO calls ({', '.join(_CALL_COLUMNS)}) VALUES ({', '.join('?' for _ in _CALL_COLUMNS)})"
_UPDATE_CALL = ("UPDATE calls SET status = ?, resident_id = ?, end_reason = ?, connected_at = ?, last_activity = ?,"
                " ended_at = ?, ringing = ?, last_actions = ?, forwarded_at = ?, answered_client_id = ?"
                " WHERE call_id = ?")
_INSERT_EVENT = ("INSERT INTO call_events (call_id, ts, actor, action, reason, from_state, to_state, client_id)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_RESIDENT_CALL = ("INSERT OR REPLACE INTO resident_calls (resident_id, call_id, start_time, outcome, seen)"
                         " VALUES (?, ?, ?, ?, ?)")


def write_transition(conn: sqlite3.Connection, call: CallSession, actor: str, action: str, reason: str | None,
                     before: str, client_id: str | None = None) -> None:
    """The statements of one transition (`before` == "new": the call's first row); the caller owns the transaction.

    The transition that ends a call also writes its outcome for each resident it was meant for."""
    end_reason = str(call.end_reason) if call.end_reason else None
    ringing = fastjson.dumps(sorted(call.ringing)) if call.ringing else "[]"
    last_actions = fastjson.dumps(call.last_actions)
    if before == "new":
        conn.execute(_INSERT_CALL, (
            call.call_id, call.device_id, call.household_number, fastjson.dumps(list(call.targets)), call.state.value,
            call.answered_by, end_reason, call.created_at, call.connected_at, call.last_activity, call.ended_at,
            call.ring_timeout_s, call.max_duration_s, ringing, last_actions,
            fastjson.dumps(sorted(call.dnd)) if call.dnd else None,
            fastjson.dumps(list(call.forward_to)) if call.forward_to else None, call.forward_after_s,
            call.forwarded_at, call.answered_client))
    else:
        cur = conn.execute(_UPDATE_CALL, (call.state.value, call.answered_by, end_reason, call.connected_at,
                                          call.last_activity, call.ended_at, ringing, last_actions, call.forwarded_at,
                                          call.answered_client, call.call_id))
        if cur.rowcount != 1:
            raise sqlite3.IntegrityError(f"call {call.call_id} has no row to update")
    conn.execute(_INSERT_EVENT, (call.call_id, call.last_activity, actor, action, reason, before, call.state.value,
                                 client_id))
    if call.state is CallState.ENDED and before != CallState.ENDED.value:
        conn.executemany(_INSERT_RESIDENT_CALL, [(rid, call.call_id, call.created_at, outcome, int(outcome != "missed"))
                                                 for rid, outcome in outcomes(call).items()])


def time_range(clauses: list[str], params: list[Any], column: str, since: float | None,
               until: float | None) -> None:
    """Narrow a query to `column` in [since, until) (either end open when None): call history, the audit log."""
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{column} < ?")
        params.append(until)


def _like(text: str) -> str:
    """`text` as a LIKE pattern that matches only itself (with ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _decode_member(row: dict[str, Any]) -> dict[str, Any]:
    """A device's `households` is stored as JSON text; `kind` null: not set (rows made before it too)."""
    if "kind" in row:
        row["kind"] = row["kind"] or None
        row["households"] = json.loads(row["households"]) if row.get("households") else None
    return row


def _decode_call(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("target_resident_ids", "ringing", "last_actions", "dnd_resident_ids", "forward_to"):
        if key in row:
            row[key] = json.loads(row[key] or "null")
    return row


def call_from_row(row: dict[str, Any]) -> CallSession:
    return CallSession(
        call_id=row["call_id"],
        device_id=row["device_id"],
        household_number=row["household_number"],
        targets=tuple(row["target_resident_ids"]),
        created_at=row["start_time"],
        ring_timeout_s=row["ring_timeout_s"],
        max_duration_s=row["max_duration_s"],
        state=CallState(row["status"]),
        ringing=frozenset(row["ringing"] or ()),
        answered_by=row["resident_id"],
        end_reason=EndReason(row["end_reason"]) if row["end_reason"] else None,
        connected_at=row["connected_at"],
        ended_at=row["ended_at"],
        last_activity=row["last_activity"],
        last_actions=row["last_actions"] or {},
        dnd=frozenset(row.get("dnd_resident_ids") or ()),
        forward_to=tuple(row.get("forward_to") or ()),
        forward_after_s=row.get("forward_after_s") or 0.0,
        forwarded_at=row.get("forwarded_at"),
        answered_client=row.get("answered_client_id"),
    )
