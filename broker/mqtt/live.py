"""One accepted MQTT connection, as the hardening layer tracks it from accept to its end.

`TimedProtocol` stamps a TCP (or TLS) connection when it is accepted, `accepted_at` reads that stamp
(or the WebSocket listener's) so the CONNECT deadline runs from the accept, `Live` is a registered
connection that a takeover or a revocation can end at any stage, and `refuse` answers a CONNECT with
a refusal.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from amqtt.adapters import ReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from broker.mqtt.accept_gate import GatedProtocol, abort, close_writer
from broker.mqtt.lazy import LazyEvent
from broker.mqtt.packet_guard import GuardedReader
from broker.mqtt.session import Session
from broker.mqtt.ws_listener import FailingWriter
from broker.mqtt.ws_listener import accepted_at as ws_accepted_at

__all__ = ["Live", "TimedProtocol", "accepted_at", "refuse"]


async def refuse(writer: WriterAdapter, code: int) -> None:
    with suppress(Exception):
        await ConnackPacket.build(0, code).to_stream(writer)
    await close_writer(writer)


class TimedProtocol(GatedProtocol):
    """The TCP listener's protocol, stamped when the connection is accepted (before any TLS handshake)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.accepted_at = time.monotonic()


def accepted_at(writer: WriterAdapter) -> float | None:
    """When the listener accepted this connection, if it recorded it."""
    if isinstance(writer, FailingWriter):
        return ws_accepted_at(writer.connection)
    if isinstance(writer, StreamWriterAdapter):
        proto = writer._writer.transport.get_protocol()  # amqtt's adapter exposes no transport
        return proto.accepted_at if isinstance(proto, TimedProtocol) else None
    return None


@dataclass(eq=False)
class Live:
    """One accepted connection holding a client id, from its registration until it has ended."""

    session: Session
    handler: BrokerProtocolHandler
    reader: ReaderAdapter
    writer: WriterAdapter
    done: asyncio.Event = field(default_factory=LazyEvent)  # set once amqtt has let the connection go
    started: bool = False  # handler.start() returned: its disconnect waiter exists
    closing: bool = False

    async def close(self) -> None:
        """End the connection now (socket dropped), whatever stage it is at."""
        self.closing = True
        if isinstance(self.reader, GuardedReader):
            self.reader.close()
        abort(self.writer)  # a peer that does not read must not hold the close up
        if self.started:
            await self.handler.handle_connection_closed()
