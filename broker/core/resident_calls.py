"""Each resident's call history and missed calls, and the retained `users/{id}/calls/missed` counter.

A call that ended `timeout`, `cancelled` or `dnd` without being answered is missed by every resident it
was meant for who did not decline it (broker.core.call_log). The counter is published retained after
the commit of the transition that ended the call, and again when the resident marks its calls seen.
"""

from __future__ import annotations

from typing import Any

from broker.core import fastjson, topics
from broker.core.call_log import entry
from broker.core.directory import Directory
from broker.core.group_commit import Publisher
from broker.core.store import Store

__all__ = ["ResidentCalls"]


class ResidentCalls:
    def __init__(self, store: Store, directory: Directory, publisher: Publisher, limit_max: int) -> None:
        self.store = store
        self.directory = directory
        self.publisher = publisher
        self.limit_max = limit_max
        # resident -> unseen missed calls, counted in sqlite once per resident then kept up to date here
        self._unseen: dict[str, int] = {}

    def history(self, resident_id: str, missed_only: bool, limit: int) -> list[dict[str, Any]]:
        self.directory.get("residents", resident_id)
        rows = self.store.resident_calls(resident_id, missed_only, max(1, min(limit, self.limit_max)))
        return [entry(r) for r in rows]

    def missed(self, resident_id: str) -> dict[str, Any]:
        """`{unseen, last_call_id}`: unseen missed calls, and the call missed last (the last one to end)."""
        return {"unseen": self._count(resident_id), "last_call_id": self.store.last_missed(resident_id)}

    def mark_seen(self, resident_id: str) -> dict[str, Any]:
        self.directory.get("residents", resident_id)
        self.store.mark_missed_seen(resident_id)
        self._unseen[resident_id] = 0
        summary = self.missed(resident_id)
        self._publish(resident_id, summary)
        return summary

    def call_missed(self, call_id: str, resident_ids: list[str]) -> None:
        """`call_id` just ended missed by these residents (its end is staged): publish their counters. Should
        the group commit fail, the caller calls `forget` (the counts are read again from sqlite)."""
        for rid in resident_ids:
            cached = self._unseen.get(rid)
            self._unseen[rid] = self.store.unseen_missed(rid) if cached is None else cached + 1
            self._publish(rid, {"unseen": self._unseen[rid], "last_call_id": call_id})

    def forget(self) -> None:
        self._unseen.clear()

    def _count(self, resident_id: str) -> int:
        if (cached := self._unseen.get(resident_id)) is None:
            cached = self._unseen[resident_id] = self.store.unseen_missed(resident_id)
        return cached

    def _publish(self, resident_id: str, summary: dict[str, Any]) -> None:
        """The resident's missed-call counter, retained (published after the open group's commit)."""
        body = fastjson.compact({"origin": "server", **summary})
        self.publisher.publish(topics.missed(resident_id), body.encode(), qos=1, retain=True)
