"""amqtt 0.12.1's BrokerProtocolHandler with the fast path bound in as methods.

FastPathMixin used to install five closures on every handler (reader loop, publish, puback,
(un)subscribe): each a function object, cells and a grown instance dict, ~3.5 KB per connection.
Here the handler carries one reference to the broker (`routed`), set once the connection is
registered, and falls back to amqtt's behaviour while it is None. It also allocates its two
events lazily and arms no keepalive write timer: amqtt re-armed one on every packet sent, for a
`handle_write_timeout` that is a no-op on the broker side (the reader enforces keepalive).
"""

from __future__ import annotations

import asyncio
from typing import Any

from amqtt.errors import ProtocolHandlerError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from broker.lazy import LazyEvent

__all__ = ["FastHandler"]


class FastHandler(BrokerProtocolHandler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reader_stopped = LazyEvent()
        self.fast_reader: Any = None  # the broker, once it reads whole packets for this connection
        self.routed: Any = None  # the broker, once it handles this connection's packets in place

    async def start(self) -> None:
        """`ProtocolHandler.start` + `BrokerProtocolHandler.start`, without the keepalive write timer."""
        if not self._is_attached():
            raise ProtocolHandlerError("Handler is not attached to a stream")
        self._reader_ready = LazyEvent()
        self._reader_stopped = LazyEvent()
        self._reader_task = asyncio.create_task(self._reader_loop())
        await asyncio.sleep(0)  # let the reader start (amqtt awaited `_reader_ready`, allocating its waiters)
        await self._retry_deliveries()
        waiter: asyncio.Future[Any] | None = self._disconnect_waiter  # type: ignore[has-type]
        if waiter is None or waiter.done():
            self._disconnect_waiter = asyncio.get_running_loop().create_future()

    def _reader_loop(self) -> Any:
        broker = self.fast_reader
        if broker is None:
            return super()._reader_loop()
        return broker._fast_reader_loop(self.session, self)

    # amqtt's reader runs what these return as a task; the broker's versions return a finished coroutine
    # when they did the work in place.
    def handle_publish(self, packet: Any) -> Any:
        broker = self.routed
        if broker is None:
            return super().handle_publish(packet)
        return broker._publish_now(self.session, self, packet)

    def handle_puback(self, packet: Any) -> Any:
        broker = self.routed
        if broker is None:
            return super().handle_puback(packet)
        return broker._puback_now(self.session, self, packet)

    def handle_subscribe(self, packet: Any) -> Any:
        broker = self.routed
        if broker is None:
            return super().handle_subscribe(packet)
        return broker._on_subscribe(self.session, self, packet.variable_header.packet_id, packet.payload.topics)

    def handle_unsubscribe(self, packet: Any) -> Any:
        broker = self.routed
        if broker is None:
            return super().handle_unsubscribe(packet)
        return broker._on_unsubscribe(self.session, self, packet.variable_header.packet_id, packet.payload.topics)
