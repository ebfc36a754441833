"""The audit log: who changed what, in `intercom.db`'s `audit` table, newest first over REST.

Kept: every admin change (directory create/update/delete), token issue and revocation, door unlock
(who, which door, outcome) and console sign-in (success or refusal). A row is written in a transaction of
its own after the action; a failure to write it is logged, never turned into a failure of the action.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from broker.core.store import Store, time_range

__all__ = ["Audit"]

log = logging.getLogger("intercom.audit")

def _cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(str(row_id).encode()).decode().rstrip("=")


def _after(cursor: str) -> int:
    """The row id a cursor points after; ValueError for one this server did not make."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    value = int(raw)
    if value < 0:
        raise ValueError(cursor)
    return value


class Audit:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock  # the table is intercom.db's schema version 5 (broker/migrations.py)

    def record(self, actor: str, action: str, target: str | None, outcome: str, remote: str | None = None,
               detail: dict[str, Any] | None = None) -> None:
        row = {"ts": self.clock(), "actor": actor, "action": action, "target": target, "outcome": outcome,
               "remote": remote, "detail": json.dumps(detail, ensure_ascii=False) if detail else None}
        try:
            with self.store._tx():  # the store's write path: after staged call transitions, through its gate
                self.store.db.conn.execute(
                    "INSERT INTO audit (ts, actor, action, target, outcome, remote, detail)"
                    " VALUES (:ts, :actor, :action, :target, :outcome, :remote, :detail)", row)
        except Exception:
            log.exception("could not write the audit row %s %s %s %s", actor, action, target, outcome)
        log.info("audit: %s %s %s: %s", actor, action, target or "-", outcome, extra={"principal": actor})

    def query(self, since: float | None, until: float | None, limit: int,
              cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Rows newest first; `cursor` (from the previous page) continues below it. Returns (rows, next cursor)."""
        clauses: list[str] = []
        params: list[Any] = []
        time_range(clauses, params, "ts", since, until)
        if cursor is not None:
            clauses.append("id < ?")
            params.append(_after(cursor))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        cur = self.store.db.conn.execute(
            f"SELECT id, ts, actor, action, target, outcome, remote, detail FROM audit{where}"
            " ORDER BY id DESC LIMIT ?", [*params, limit + 1])
        rows = cur.fetchall()
        more = len(rows) > limit
        items = [{"id": r[0], "ts": r[1], "actor": r[2], "action": r[3], "target": r[4], "outcome": r[5],
                  "remote": r[6], "detail": json.loads(r[7]) if r[7] else None} for r in rows[:limit]]
        return items, _cursor(items[-1]["id"]) if more else None
