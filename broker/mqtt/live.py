"""A registered MQTT connection, as the hardening layer tracks it until it has ended.

`Live` is what a takeover or a revocation finds by client id: it ends the connection (`close`) and waits
for `done`, which the connection's end path sets (`ConnectMixin.close_session`) before the session's cleanup.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amqtt.session import Session

from broker.mqtt.lazy import LazyEvent

if TYPE_CHECKING:
    from broker.mqtt.connection import Connection

__all__ = ["Live"]


@dataclass(eq=False, slots=True)
class Live:
    """One connection holding a client id, from its registration until it has ended."""

    session: Session
    handler: Connection
    server: Any  # amqtt's listener `Server`: the connection holds one of its slots until it ends
    present: bool = False  # it resumed an existing session
    done: asyncio.Event = field(default_factory=LazyEvent)  # set once the connection has ended
    closing: bool = False

    async def close(self) -> None:
        """End the connection now: MQTT 5 gets DISCONNECT 0x8E [MQTT-3.1.4-3], flushed (at most 1 s, so a peer
        that does not read cannot hold the takeover up), then the socket closes."""
        self.closing = True
        await self.handler.handle_connection_closed()
