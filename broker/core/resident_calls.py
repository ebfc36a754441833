"""Each resident's call history and missed calls, and the retained `users/{id}/calls/missed` counter.

A call that ended `timeout`, `cancelled` or `dnd` without being answered is missed by every resident it
was meant for who did not decline it (broker.core.call_log). The counter is published retained after
the commit of the transition that ended the call, and again when the resident marks its calls seen.
"""

from __future__ import annotations

from typing import Any

from broker.core import fastjson
from broker.core.call_log import entry
from broker.core.directory import Directory
from broker.core.group_commit import Publisher
from broker.core.payloads import topics
from broker.core.store import Store

__all__ = ["ResidentCalls"]


class ResidentCalls:
    def __init__(self, store: Store, directory: Directory, publisher: Publisher, limit_max: int) -> None:
        self.store = store
        self.directory = directory
        self.publisher = publisher
        self.limit_max = limit_max

    def history(self, resident_id: str, missed_only: bool, limit: int) -> list[dict[str, Any]]:
        self.directory.get("residents", resident_id)
        rows = self.store.resident_calls(resident_id, missed_only, max(1, min(limit, self.limit_max)))
        return [entry(r) for r in rows]

    def missed(self, resident_id: str) -> dict[str, Any]:
        unseen, last = self.store.missed_summary(resident_id)
        return {"unseen": unseen, "last_call_id": last}

    def mark_seen(self, resident_id: str) -> dict[str, Any]:
        self.directory.get("residents", resident_id)
        self.store.mark_missed_seen(resident_id)
        return self.publish_missed(resident_id)

    def publish_missed(self, resident_id: str) -> dict[str, Any]:
        """Publish the resident's missed-call counter, retained (after the open group's commit)."""
        summary = self.missed(resident_id)
        body = fastjson.compact({"origin": "server", **summary})
        self.publisher.publish(topics.missed(resident_id), body.encode(), qos=1, retain=True)
        return summary
