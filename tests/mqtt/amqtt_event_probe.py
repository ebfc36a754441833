"""An integrator's amqtt plugin, loaded by class path through `mqtt.plugins`: it records amqtt's events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amqtt.broker import BrokerContext
from amqtt.plugins.base import BasePlugin


class EventProbe(BasePlugin[BrokerContext]):
    """Keeps (event, client id, topic) for every client connect and message received."""

    def __init__(self, context: BrokerContext) -> None:
        super().__init__(context)
        self.seen: list[tuple[str, str | None, str | None]] = []

    async def on_broker_client_connected(self, *, client_id: str, client_session: Any) -> None:
        self.seen.append(("connected", client_id, None))

    async def on_broker_message_received(self, *, client_id: str | None, message: Any) -> None:
        self.seen.append(("received", client_id, message.topic))

    @dataclass
    class Config:
        label: str = "probe"


class SecondBarrier(BasePlugin[BrokerContext]):
    """A second `hooks.AcknowledgesAfter` beside the call plugin's: the broker must refuse to start."""

    def acknowledge_after(self, send: Any) -> None:
        send()
class PublishOnConnect(BasePlugin[BrokerContext]):
    """Publishes `dup/t` (QoS 1) through amqtt's `BrokerContext.broadcast_message` whenever a client id starting
    with "dup-" connects: a delivery to that client while its connection is being set up."""

    async def on_broker_client_connected(self, *, client_id: str, client_session: Any) -> None:
        if client_id.startswith("dup-"):
            await self.context.broadcast_message("dup/t", b"during-connect", qos=1)

    @dataclass
    class Config:
        pass
