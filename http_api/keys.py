"""Typed application state."""

from aiohttp import web

from broker.core.services import Services

__all__ = ["HEALTH", "PRINCIPAL", "SERVICES", "WS_PORT"]

SERVICES = web.AppKey("services", Services)
# Set by the server once the broker listens; /healthz reads it.
HEALTH = web.AppKey("health", dict)

# The caller resolved by the auth middleware (None: anonymous, local-only mode).
PRINCIPAL = web.RequestKey("principal", object)

# The embedded broker's bound MQTT-over-WebSocket port, set by the server (absent: no WS listener).
WS_PORT = web.AppKey("ws_port", int)
