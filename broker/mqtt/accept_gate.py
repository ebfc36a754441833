"""Accept-time refusals: max connections (fitted to `ulimit -n`) and the per-address CONNECT rate.

`GatedProtocol` applies them in `connection_made`, so a refused TCP socket costs no stream objects
and no task; the WebSocket listener goes through `AcceptGate.admit` from `_client_connected`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from amqtt.adapters import StreamWriterAdapter, WriterAdapter

from broker.config import LimitsConfig
from broker.fd_budget import fd_bounded, http_fd_share
from broker.limiter import KeyedLimiter, LogThrottle, is_exempt

__all__ = ["AcceptGate", "GatedProtocol", "abort", "admitted_at_accept", "close_writer"]

log = logging.getLogger("intercom.hardening")
_quiet = LogThrottle()
_CLOSE_WAIT_S = 2.0


class AcceptGate:
    """Open-connection count and the per-address CONNECT bucket of one broker."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self.max_connections = fd_bounded(limits.max_connections, http_fd_share(limits.max_http_connections))
        self.open = 0
        self.connect_rate = KeyedLimiter(limits.connect_rate.per_s, limits.connect_rate.burst)
        self.refused: collections.Counter[str] = collections.Counter()  # by reason, for /metrics

    def admit(self, address: str | None) -> str | None:
        """Count a new connection in, or say why it is refused (and log that, throttled)."""
        why = self._refusal(address)
        if why is None:
            self.open += 1
            return None
        self.refused["max_connections" if why.startswith("max_connections") else "connect_rate"] += 1
        _quiet.log(log, logging.WARNING, f"{address} {why}", "refused MQTT connection from %s: %s", address, why)
        return why

    def release(self) -> None:
        self.open -= 1

    def _refusal(self, address: str | None) -> str | None:
        if self.open >= self.max_connections:
            return f"max_connections ({self.max_connections}) reached"
        if is_exempt(address, self.limits.exempt_networks):
            return None
        if not self.connect_rate.take(address or "?"):
            return "CONNECT rate limit for this address"
        return None


class GatedProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, refusing a connection in `connection_made` before any task exists.

    The admission is kept on the protocol, not keyed by transport: uvloop's TLS transport cannot be
    weakly referenced (nor is any transport guaranteed to be), and the protocol is what a stream
    writer's transport leads back to (`transport.get_protocol()`) on both loops.
    """

    admitted = False  # counted in by connection_made; `_client_connected` must not count it again

    def __init__(self, reader: asyncio.StreamReader, connected: Any, gate: AcceptGate) -> None:
        super().__init__(reader, connected)
        self._gate = gate
        del self._drain_waiters  # made on first use (below): most connections never wait to drain

    def __getattr__(self, name: str) -> Any:
        if name != "_drain_waiters":
            raise AttributeError(name)
        waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._drain_waiters = waiters
        return waiters

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if self._gate.admit(peer[0] if peer else None) is not None:
            transport.abort()  # type: ignore[attr-defined]
            return
        self.admitted = True
        super().connection_made(transport)


def admitted_at_accept(writer: WriterAdapter) -> bool:
    """Whether `writer`'s connection was already counted in by GatedProtocol (once: the answer is taken)."""
    stream = getattr(writer, "_writer", None)  # amqtt's StreamWriterAdapter keeps the asyncio StreamWriter here
    transport = getattr(stream, "transport", None)
    protocol = transport.get_protocol() if transport is not None else None
    if isinstance(protocol, GatedProtocol) and protocol.admitted:
        protocol.admitted = False
        return True
    return False


def abort(writer: WriterAdapter) -> None:
    """Drop a connection we refuse at accept: no graceful close to wait for."""
    if isinstance(writer, StreamWriterAdapter):
        writer.is_closed = True
        writer._writer.transport.abort()  # amqtt's adapter exposes no abort()
    else:
        asyncio.ensure_future(close_writer(writer))  # noqa: RUF006 - fire and forget; close_writer never raises


async def close_writer(writer: WriterAdapter) -> None:
    """Close a client connection without waiting on a peer that does not read."""
    try:
        await asyncio.wait_for(writer.close(), _CLOSE_WAIT_S)
    except Exception:  # the peer is going away; any failure here means "closed"
        if isinstance(writer, StreamWriterAdapter):
            writer._writer.transport.abort()  # amqtt's adapter exposes no abort()
