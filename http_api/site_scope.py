"""The REST API scoped by site: an instance serving site `A` answers every path also under `/sites/A/…`.

One reverse proxy or load balancer in front of many site instances (bridge mode, `--site-id`) routes by that
prefix (docs/scale-out.md "The admin API per site, and the integrator view"). The prefix is stripped before
routing, so the prefixed request runs exactly the plain path's middlewares and view: no second route table, and
the OpenAPI document (the served routes) is unchanged. A path naming any other site is a 404 `unknown_site`
answered here, before any middleware or view could read this site's data.
"""

from __future__ import annotations

from aiohttp import web
from yarl import URL

from http_api.envelope import Handler, error_response
from http_api.keys import SITE_SCOPE, SiteScope

__all__ = ["PREFIX", "scope_of", "site_id_of", "site_scope_middleware"]

PREFIX = "/sites"


def scope_of(app: web.Application) -> SiteScope:
    return app.get(SITE_SCOPE) or SiteScope()


def site_id_of(app: web.Application) -> str | None:
    return scope_of(app).site_id


@web.middleware
async def site_scope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: `/sites/{own id}/rest` is served as `/rest`; `/sites/{other}/…` is a 404 `unknown_site`."""
    path = request.path
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return await handler(request)
    site, slash, _ = path[len(PREFIX) + 1:].partition("/")
    own = site_id_of(request.app)
    if own is None or site != own:
        return error_response(404, f"this instance does not serve site '{site[:64]}'", "unknown_site")
    if not slash:  # `/sites/A`: the console's page must load from `/sites/A/` for its relative file paths
        raise web.HTTPPermanentRedirect(f"{PREFIX}/{own}/")
    raw = request.raw_path  # still percent-encoded, with the query string: only the prefix is cut
    mount = f"{PREFIX}/{own}/"
    if not raw.startswith(mount):  # the id spelled percent-encoded: not how any client names a site
        return error_response(404, f"this instance does not serve site '{site[:64]}'", "unknown_site")
    path, _, query = raw[len(mount) - 1:].partition("?")
    # built, not parsed: `//x/…` must stay a path (URL() would read `x` as a host)
    url = URL.build(path=path, query_string=query, encoded=True)
    # `_handle` is what aiohttp runs for a request off the wire: route, then every middleware, then the view.
    return await request.app._handle(request.clone(rel_url=url))
