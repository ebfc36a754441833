"""The call store on PostgreSQL (`store.url: postgresql://…`), behind the sqlite store's interface.

The seam is the connection, not the store: `Store` (broker/core/store.py) and the group commit
(broker/core/group_commit.py) talk to `store.db` the way they talk to sqlite_utils and sqlite3, and this module
gives them the same small surface over one psycopg 3 connection:

- `PgConnection`: `execute`/`executemany`/`commit`/`rollback`/`in_transaction`/`with conn:` as sqlite3 has them.
  SQL is translated once per statement text (cached): `?` and `:name` placeholders, `[column]` quoting,
  `INSERT OR REPLACE`. psycopg errors are raised as sqlite3 errors (IntegrityError for a constraint, else
  OperationalError): the core's `except sqlite3.Error` paths (undo a group, 500) then work unchanged.
- `PgDatabase`/`PgTable`: the sqlite_utils calls the store makes (`get`, `insert`, `upsert`, `update`,
  `rows_where`, `rows`).
- `PgStore`: the store, with the two queries sqlite spells its own way (`rowid`, a FROM subquery without alias).

The connection runs in autocommit mode with explicit BEGIN/COMMIT, as the group commit already issues them.
Calls on it are synchronous on the event loop, as the sqlite store's are (a loopback round trip: ~0.1-0.3 ms).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

import psycopg
from psycopg.pq import TransactionStatus
from sqlite_utils import Database
from sqlite_utils.db import NotFoundError

from broker.core.store import Store
from broker.core.write_gate import WriteGate
from broker.db_open import StorageError
from broker.migrations import POSTGRES_INTERCOM, upgrade_postgres

__all__ = ["PgConnection", "PgDatabase", "PgStore", "redact"]

log = logging.getLogger("intercom.store")

# primary keys: the tables whose rows are got, updated or replaced by key
PKS: dict[str, tuple[str, ...]] = {
    "households": ("household_number",), "residents": ("resident_id",), "devices": ("device_id",),
    "calls": ("call_id",), "call_events": ("id",), "device_status": ("device_id",), "system_messages": ("id",),
    "door_events": ("id",), "resident_calls": ("resident_id", "call_id"), "dnd_settings": ("scope", "subject"),
    "household_forwarding": ("household_number",), "device_status_history": ("id",),
    "resident_tokens": ("resident_id", "name"), "audit": ("id",),
}

_LITERAL = re.compile(r"('(?:[^']|'')*')")
_REPLACE = re.compile(r"^\s*INSERT OR REPLACE INTO (\w+) \(([^)]*)\)(.*)$", re.S)


def redact(url: str) -> str:
    """The URL without a password, for logs and /healthz."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def translate(sql: str, named: bool = False) -> str:
    """sqlite's dialect, as the store writes it, in PostgreSQL's (outside string literals only)."""
    if m := _REPLACE.match(sql):
        table, columns, rest = m.group(1), [c.strip() for c in m.group(2).split(",")], m.group(3)
        pk = PKS[table]
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in pk)
        sql = f"INSERT INTO {table} ({', '.join(columns)}){rest} ON CONFLICT ({', '.join(pk)}) DO UPDATE SET {sets}"
    out = []
    for i, part in enumerate(_LITERAL.split(sql)):
        if i % 2:  # a string literal: as it is
            out.append(part)
            continue
        part = part.replace("%", "%%")
        part = re.sub(r"\[(\w+)\]", r'"\1"', part)
        part = re.sub(r"(?<!:):(\w+)", r"%(\1)s", part) if named else part.replace("?", "%s")
        out.append(part)
    return "".join(out)


def _value(v: Any) -> Any:
    """sqlite's loose typing where the store relies on it: bools are integers, lists and dicts JSON text."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, list | dict | tuple):
        return json.dumps(v)
    return v


def _params(params: Any) -> Any:
    if params is None:
        return None
    if isinstance(params, dict):
        return {k: _value(v) for k, v in params.items()}
    return [_value(v) for v in params]


def _as_sqlite(exc: psycopg.Error) -> sqlite3.Error:
    kind = sqlite3.IntegrityError if isinstance(exc, psycopg.errors.IntegrityError) else sqlite3.OperationalError
    return kind(f"postgresql: {exc}".strip())


class PgConnection:
    """The sqlite3.Connection subset the store and the group commit use, over one psycopg connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.raw = self._connect()
        self._sql: dict[tuple[str, bool], str] = {}

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise _as_sqlite(exc) from exc

    def _usable(self) -> psycopg.Connection[Any]:
        """The connection, opened again if the last statement found it lost (server restart, a killed backend):
        the statement that found it failed (its group undone); the next one runs on a new connection. A lost
        connection has no transaction left to lose."""
        if self.raw.broken or self.raw.closed:
            log.warning("the PostgreSQL connection to %s was lost: connecting again", redact(self.url))
            with contextlib.suppress(psycopg.Error):
                self.raw.close()
            self.raw = self._connect()
        return self.raw

    def _translated(self, sql: str, named: bool) -> str:
        key = (sql, named)
        if (out := self._sql.get(key)) is None:
            out = self._sql[key] = translate(sql, named)
        return out

    def execute(self, sql: str, params: Any = None) -> psycopg.Cursor[Any]:
        try:
            return self._usable().execute(cast(Any, self._translated(sql, isinstance(params, dict))),
                                          _params(params))
        except psycopg.Error as exc:
            raise _as_sqlite(exc) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cur = self._usable().cursor()
        try:
            cur.executemany(cast(Any, self._translated(sql, False)), [_params(r) for r in rows])
        except psycopg.Error as exc:
            raise _as_sqlite(exc) from exc
        return cur

    @property
    def in_transaction(self) -> bool:
        status = self.raw.info.transaction_status
        return status not in (TransactionStatus.IDLE, TransactionStatus.UNKNOWN)  # UNKNOWN: the connection is lost

    def commit(self) -> None:
        if self.in_transaction:
            self.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.execute("ROLLBACK")

    def __enter__(self) -> PgConnection:
        """`with conn:` is a transaction, committed on success and rolled back on an error, as in sqlite3."""
        if not self.in_transaction:
            self.execute("BEGIN")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.rollback()

    def close(self) -> None:
        self.raw.close()


def _rows(cur: psycopg.Cursor[Any]) -> Iterator[dict[str, Any]]:
    names = [d.name for d in cur.description or ()]
    for row in cur.fetchall():
        yield dict(zip(names, row, strict=True))


class PgTable:
    """The sqlite_utils Table calls the store makes; identifiers are quoted (`by` is a keyword here)."""

    def __init__(self, conn: PgConnection, name: str) -> None:
        self.conn = conn
        self.name = name
        self.pk = PKS[name]
        self.last_pk: Any = None

    def _where_pk(self, ident: Any) -> tuple[str, list[Any]]:
        values = list(ident) if isinstance(ident, tuple | list) else [ident]
        return " AND ".join(f'"{c}" = ?' for c in self.pk), values

    def get(self, ident: Any) -> dict[str, Any]:
        where, params = self._where_pk(ident)
        for row in _rows(self.conn.execute(f'SELECT * FROM "{self.name}" WHERE {where}', params)):
            return row
        raise NotFoundError

    def _insert(self, row: dict[str, Any], pk: Any, conflict: str) -> PgTable:
        keys = tuple(pk) if isinstance(pk, tuple | list) else (pk,) if pk else self.pk
        cols = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join("?" for _ in row)
        if conflict:
            sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in row if c not in keys)
            keyed = ", ".join(f'"{k}"' for k in keys)
            on = f" ON CONFLICT ({keyed}) " + (f"DO UPDATE SET {sets}" if sets else "DO NOTHING")
        else:
            on = ""
        returning = ", ".join(f'"{c}"' for c in self.pk)
        cur = self.conn.execute(f'INSERT INTO "{self.name}" ({cols}) VALUES ({marks}){on} RETURNING {returning}',
                                list(row.values()))
        got = cur.fetchone()
        self.last_pk = None if got is None else got[0] if len(got) == 1 else tuple(got)
        return self

    def insert(self, row: dict[str, Any], pk: Any = None, replace: bool = False) -> PgTable:
        return self._insert(row, pk, "replace" if replace else "")

    def upsert(self, row: dict[str, Any], pk: Any = None) -> PgTable:
        return self._insert(row, pk, "upsert")  # only the given columns change, as sqlite_utils' upsert

    def update(self, ident: Any, values: dict[str, Any]) -> PgTable:
        self.get(ident)  # NotFoundError, as sqlite_utils
        if values:
            where, params = self._where_pk(ident)
            sets = ", ".join(f'"{c}" = ?' for c in values)
            self.conn.execute(f'UPDATE "{self.name}" SET {sets} WHERE {where}', [*values.values(), *params])
        return self

    def rows_where(self, where: str | None = None, where_args: Sequence[Any] | None = None,
                   order_by: str | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        sql = f'SELECT * FROM "{self.name}"'
        if where:
            sql += f" WHERE {where}"
        if order_by:
            sql += f" ORDER BY {order_by}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return _rows(self.conn.execute(sql, list(where_args or ())))

    @property
    def rows(self) -> Iterator[dict[str, Any]]:
        return self.rows_where()


class PgDatabase:
    """The sqlite_utils Database calls the store makes."""

    def __init__(self, conn: PgConnection) -> None:
        self.conn = conn

    def table(self, name: str) -> PgTable:
        return PgTable(self.conn, name)

    def execute(self, sql: str, params: Any = None) -> psycopg.Cursor[Any]:
        return self.conn.execute(sql, params)

    def close(self) -> None:
        self.conn.close()


class PgStore(Store):
    """The store over a PostgreSQL database: the same methods, transactions, gate and group commit."""

    def __init__(self, url: str) -> None:  # not Store.__init__, which opens a sqlite file
        self.path = None
        self.url = url
        try:
            conn = PgConnection(url)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the store {redact(url)}: {exc}") from exc
        # typed as the sqlite_utils Database the store's methods are written against: PgDatabase is its subset
        self.db = cast(Database, PgDatabase(conn))
        self.before_write = None
        self.gate = WriteGate(redact(url))
        try:
            upgrade_postgres(conn, POSTGRES_INTERCOM)
        except BaseException:
            conn.close()
            raise

    def last_missed(self, resident_id: str) -> str | None:
        row = self.db.conn.execute("SELECT call_id FROM resident_calls WHERE resident_id = ? AND outcome = 'missed'"
                                   " ORDER BY seq DESC LIMIT 1", [resident_id]).fetchone()
        return row[0] if row else None

    def status_history(self, device_id: str, since: float) -> list[dict[str, Any]]:
        rows = self.db.conn.execute(
            "SELECT * FROM (SELECT ts, online, battery, id FROM device_status_history WHERE device_id = ? AND ts < ?"
            " ORDER BY ts DESC, id DESC LIMIT 1) AS before_since UNION ALL SELECT ts, online, battery, id"
            " FROM device_status_history WHERE device_id = ? AND ts >= ? ORDER BY 1, 4",
            [device_id, since, device_id, since]).fetchall()
        return [{"ts": ts, "online": None if on is None else bool(on), "battery": bat} for ts, on, bat, _ in rows]
