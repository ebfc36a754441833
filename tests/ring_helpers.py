"""Helpers shared by the issue-13 tests (several clients per resident, DND, forwarding, missed calls)."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import ADMIN, Harness

__all__ = ["is_ctl", "put", "token"]


def is_ctl(action: str, reason: str | None = None) -> Any:
    """A predicate for Inbox.wait_for: a server control message with this action (and reason)."""
    def pred(topic: str, body: Any) -> bool:
        return (topic.endswith("/calls/control") and isinstance(body, dict) and body.get("origin") == "server"
                and "error" not in body and body["call_info"]["action"] == action
                and (reason is None or body["call_info"]["reason"] == reason))
    return pred


async def put(h: Harness, path: str, body: Any, token: str | None = None, raw: bytes | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = raw if raw is not None else json.dumps(body).encode()
    async with h.http.put(h.base + path, data=data, headers=headers) as r:
        return r.status, await r.json()


async def token(h: Harness, kind: str, ident: str) -> str:
    """Issue a token for a resident or device (admin API)."""
    status, resp = await h.post(f"/api/admin/{kind}/{ident}/token", {}, token=ADMIN)
    assert status == 200, resp
    return str(resp["data"]["token"])
