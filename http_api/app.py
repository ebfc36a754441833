"""The aiohttp app factory."""

from __future__ import annotations

from aiohttp import web

from broker.core.services import Services
from broker.web_guard import WebGuard
from http_api.audit_views import audit_middleware, log_context_middleware
from http_api.auth import auth_middleware
from http_api.cors import cors_preflight_middleware, setup_cors
from http_api.envelope import error_middleware
from http_api.keys import HEALTH, SERVICES, SITE_SCOPE, WEB_GUARD, SiteScope
from http_api.metrics_views import metrics_auth_middleware
from http_api.ratelimit import rate_limit_middlewares
from http_api.read_deadline import read_deadline_middleware
from http_api.routes import setup_routes
from http_api.site_scope import site_scope_middleware
from http_api.web_guard import web_guard_middleware

__all__ = ["create_app"]


def create_app(services: Services, guard: WebGuard | None = None, scope: SiteScope | None = None) -> web.Application:
    """`guard`: the Host/Origin rules shared with the WebSocket listener (default: from the settings). `scope`: the
    site this instance serves (bridge mode's `--site-id`): its paths are answered under `/sites/{site_id}/` too."""
    per_ip, per_principal = rate_limit_middlewares(services.settings.limits)
    app = web.Application(
        middlewares=[site_scope_middleware, error_middleware, web_guard_middleware, read_deadline_middleware, per_ip,
                     cors_preflight_middleware, metrics_auth_middleware, audit_middleware, auth_middleware,
                     log_context_middleware, per_principal],
        client_max_size=services.settings.http.max_body_bytes,
    )
    app[SERVICES] = services
    app[WEB_GUARD] = guard if guard is not None else WebGuard.from_settings(services.settings)
    app[HEALTH] = {"broker": False}
    if scope is not None:
        app[SITE_SCOPE] = scope
    setup_routes(app)
    setup_cors(app)
    return app
