"""Accept-time refusals: max connections (fitted to `ulimit -n`) and the per-address CONNECT rate.

`protocol.MqttProtocol` applies them in `connection_made` (TCP, TLS and WebSocket alike), so a refused
socket costs nothing more: no buffer and no task.
"""

from __future__ import annotations

import collections
import logging

from broker.config import LimitsConfig
from broker.fd_budget import fd_bounded, http_fd_share
from broker.limiter import KeyedLimiter, LogThrottle, is_exempt

__all__ = ["AcceptGate"]

log = logging.getLogger("intercom.hardening")
_quiet = LogThrottle()


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
