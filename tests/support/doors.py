"""A door station on a real MQTT connection: it receives `devices/{id}/commands` and acks them its way."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from tests.support.harness import Harness

# The smallest well-formed JPEG a test needs: SOI, an APP0 marker, EOI.
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 64 + b"\xff\xd9"


class Station:
    """What the station received, and how it answers (`ack`: "ok", "fail" or None for silence)."""

    def __init__(self, client: Any, device_id: str, ack: str | None) -> None:
        self.client = client
        self.device_id = device_id
        self.ack = ack
        self.commands: list[dict[str, Any]] = []
        self.control: list[dict[str, Any]] = []
        self._event = asyncio.Event()

    async def run(self) -> None:
        async for msg in self.client.messages:
            body = json.loads(msg.payload)
            if str(msg.topic).endswith("/calls/control"):
                self.control.append(body)
            elif str(msg.topic) == f"devices/{self.device_id}/commands":
                self.commands.append(body)
                if self.ack is not None:
                    ack = {"command_id": body["command_id"], "ok": self.ack == "ok"}
                    if self.ack != "ok":
                        ack["error"] = "relay jammed"
                    await self.client.publish(f"devices/{self.device_id}/commands/ack", json.dumps(ack), qos=1)
            self._event.set()

    async def wait(self, pred: Any, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for body in self.commands + self.control:
                    if pred(body):
                        return body
                self._event.clear()
                await self._event.wait()


async def wait_online(h: Harness, device_id: str, token: str | None = None) -> None:
    """Until the server has recorded the station's connection (presence runs just after CONNACK)."""
    async def online() -> bool:
        status, resp = await h.get(f"/api/devices/{device_id}/status", token)
        return status == 200 and bool(resp["data"]["online"])

    await h.until(online, what=f"device {device_id} online")


@contextlib.asynccontextmanager
async def station(h: Harness, device_id: str = "1", ack: str | None = "ok", token: str | None = None,
                  admin: str | None = None) -> AsyncIterator[Station]:
    """A connected door station subscribed to its commands and control topics."""
    client = h.mqtt(f"device-{device_id}", username=device_id if token else None, password=token)
    async with client:
        await client.subscribe(f"devices/{device_id}/commands", qos=1)
        await client.subscribe(f"devices/{device_id}/calls/control", qos=1)
        st = Station(client, device_id, ack)
        task = asyncio.create_task(st.run())
        await wait_online(h, device_id, admin)
        try:
            yield st
        finally:
            # Cancel until it takes: a cancel landing as the ack's PUBACK completes can be swallowed by
            # asyncio.wait_for inside aiomqtt's publish (Python 3.11), leaving the task running.
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.2)
