"""Typed application state."""

from aiohttp import web

from broker.services import Services

__all__ = ["HEALTH", "SERVICES"]

SERVICES = web.AppKey("services", Services)
# Set by the server once the broker listens; /healthz reads it.
HEALTH = web.AppKey("health", dict)
