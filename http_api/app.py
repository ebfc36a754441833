"""The aiohttp app factory."""

from __future__ import annotations

from aiohttp import web

from broker.core.services import Services
from http_api.audit_views import audit_middleware, log_context_middleware
from http_api.auth import auth_middleware
from http_api.cors import cors_preflight_middleware, setup_cors
from http_api.envelope import error_middleware
from http_api.keys import HEALTH, SERVICES
from http_api.metrics_views import metrics_auth_middleware
from http_api.ratelimit import rate_limit_middlewares
from http_api.read_deadline import read_deadline_middleware
from http_api.routes import setup_routes

__all__ = ["create_app"]


def create_app(services: Services) -> web.Application:
    per_ip, per_principal = rate_limit_middlewares(services.settings.limits)
    app = web.Application(
        middlewares=[error_middleware, read_deadline_middleware, per_ip, cors_preflight_middleware,
                     metrics_auth_middleware, audit_middleware, auth_middleware, log_context_middleware, per_principal],
        client_max_size=services.settings.http.max_body_bytes,
    )
    app[SERVICES] = services
    app[HEALTH] = {"broker": False}
    setup_routes(app)
    setup_cors(app)
    return app
