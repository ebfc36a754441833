"""A transport whose bytes a task feeds to an `MqttProtocol` (the WebSocket listener's `WsTransport`).

Kept apart from `protocol.py`: it extends asyncio's `Transport` (a Python class), which a class the compiled
build makes native could not.
"""

from __future__ import annotations

import asyncio

__all__ = ["PumpedTransport"]


class PumpedTransport(asyncio.Transport):
    """A transport fed by a task: it drains on its own (`MqttProtocol.drain` awaits it)."""

    async def drain(self) -> None:
        raise NotImplementedError
