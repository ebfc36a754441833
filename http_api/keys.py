"""Typed application state."""

from collections.abc import Callable

from aiohttp import web

from broker.core.services import Services

__all__ = ["HEALTH", "PRINCIPAL", "SERVICES", "UNBAN", "WS_PORT"]

SERVICES = web.AppKey("services", Services)
# Set by the server once the broker listens; /healthz reads it.
HEALTH = web.AppKey("health", dict)

# The caller resolved by the auth middleware (None: anonymous, local-only mode).
PRINCIPAL = web.RequestKey("principal", object)

# The embedded broker's bound MQTT-over-WebSocket port, set by the server (absent: no WS listener).
WS_PORT = web.AppKey("ws_port", int)

# Lifts an MQTT client id's flapping ban (True: it was banned), set by the embedded server (absent in bridge mode).
UNBAN: web.AppKey[Callable[[str], bool]] = web.AppKey("unban")
