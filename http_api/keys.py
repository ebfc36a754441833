"""Typed application state."""

from aiohttp import web

from broker.core.services import Services
from broker.web_guard import WebGuard

__all__ = ["HEALTH", "PRINCIPAL", "SERVICES", "WEB_GUARD", "WS_PORT"]

SERVICES = web.AppKey("services", Services)
# Set by the server once the broker listens; /healthz reads it.
HEALTH = web.AppKey("health", dict)

# The caller resolved by the auth middleware (None: anonymous, local-only mode).
PRINCIPAL = web.RequestKey("principal", object)

# The embedded broker's bound MQTT-over-WebSocket port, set by the server (absent: no WS listener).
WS_PORT = web.AppKey("ws_port", int)

# The Host and Origin rules (broker/web_guard.py), shared with the MQTT WebSocket listener.
WEB_GUARD = web.AppKey("web_guard", WebGuard)
