"""MQTT parties for the call tests: an `Inbox` of one client's messages, `parties` to connect several, `is_ctl`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt

from tests.support.harness import Harness


def is_ctl(action: str, reason: str | None = None) -> Callable[[str, Any], bool]:
    """A predicate for `Inbox.wait_for`: a server control message (not an error) with this action (and reason)."""
    def pred(topic: str, body: Any) -> bool:
        if not (topic.endswith("/calls/control") and isinstance(body, dict) and body.get("origin") == "server"):
            return False
        info = body.get("call_info") or {}
        return ("error" not in body and info.get("action") == action
                and (reason is None or info.get("reason") == reason))
    return pred


class Inbox:
    """Collects JSON messages from one aiomqtt client, by topic."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[tuple[str, Any, bool]] = []
        self._event = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.client.messages:
            try:
                body = json.loads(msg.payload)  # type: ignore[arg-type]
            except ValueError:
                body = msg.payload
            self.messages.append((str(msg.topic), body, bool(msg.retain)))
            self._event.set()

    async def wait_for(self, pred: Callable[[str, Any], bool], timeout: float = 5.0) -> tuple[str, Any]:
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for topic, body, _ in self.messages[seen:]:
                    if pred(topic, body):
                        return topic, body
                seen = len(self.messages)
                self._event.clear()
                await self._event.wait()

    def server_msgs(self, topic_suffix: str = "") -> list[Any]:
        return [b for t, b, _ in self.messages
                if t.endswith(topic_suffix) and isinstance(b, dict) and b.get("origin") == "server"]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@contextlib.asynccontextmanager
async def parties(harness: Harness) -> AsyncIterator[Callable[..., Any]]:
    """Connect subscribed MQTT parties to `harness`: connect('resident', '2') -> Inbox; all closed on exit."""
    stack: list[tuple[aiomqtt.Client, Inbox]] = []

    async def connect(role: str, ident: str, topics: list[str] | None = None, **kw: Any) -> Inbox:
        client = harness.mqtt(f"{role}-{ident}", **kw)
        await client.__aenter__()
        for t in topics or ([f"users/{ident}/#"] if role == "resident" else [f"devices/{ident}/#"]):
            await client.subscribe(t, qos=1)
        inbox = Inbox(client)
        stack.append((client, inbox))
        return inbox

    try:
        yield connect
    finally:
        for client, inbox in reversed(stack):
            await inbox.close()
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
