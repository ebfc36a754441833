"""Probing the sites: every site at once, each within its own timeout, so one slow or dead site never holds up or
fails the view. Each probe reads the site's public `/healthz` (is it up, which site does it say it is) and its
`GET /api/admin/site` through the site's own prefix `/sites/{site_id}/`, so an instance that serves another site
answers 404 `unknown_site` instead of lending its numbers to this one."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from broker.integrator.config import SiteEntry

__all__ = ["Site", "SiteError", "Sites"]


class SiteError(Exception):
    """A site could not be read: unreachable, too slow, refused our token, or answered nonsense."""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Site:
    """One watched site and what the integrator last learned about it."""

    entry: SiteEntry
    token: str
    last_error: str | None = None
    last_error_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def site_id(self) -> str:
        return self.entry.site_id

    def scoped(self, path: str) -> str:
        """`path` of this site's REST API under its own prefix (a wrong instance answers unknown_site)."""
        return f"{self.entry.url}/sites/{self.site_id}{path}"

    def failed(self, why: str) -> None:
        self.last_error, self.last_error_at = why, _now_iso()


async def get_json(http: aiohttp.ClientSession, url: str, token: str | None,
                   params: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """GET `url`: (status, JSON body, the headers worth passing on); SiteError if there is no JSON answer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with http.get(url, headers=headers, params=params, allow_redirects=False) as r:
            try:
                body = await r.json(content_type=None)
            except ValueError as exc:
                raise SiteError(f"HTTP {r.status} without a JSON body from {url}") from exc
            passed = {k: v for k, v in r.headers.items() if k in ("X-Next-Cursor",)}
            return r.status, body, passed
    except aiohttp.ClientError as exc:
        raise SiteError(f"{type(exc).__name__}: {exc}") from exc


def _message(body: Any) -> str:
    return str(body.get("message")) if isinstance(body, dict) else "no envelope"


def _data(body: Any) -> dict[str, Any]:
    data = body.get("data") if isinstance(body, dict) else None
    return data if isinstance(data, dict) else {}


class Sites:
    """The configured sites, probed together by `report()`."""

    def __init__(self, entries: list[SiteEntry], tokens: dict[str, str], timeout_s: float,
                 max_parallel: int) -> None:
        self.sites = {e.site_id: Site(e, tokens[e.site_id]) for e in entries}
        self.timeout_s = timeout_s
        self._parallel = asyncio.Semaphore(max_parallel)

    async def report(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """One row per site, in the configured order; never raises for a site's fault."""
        return list(await asyncio.gather(*(self._row(http, s) for s in self.sites.values())))

    async def _row(self, http: aiohttp.ClientSession, site: Site) -> dict[str, Any]:
        row: dict[str, Any] = {"site_id": site.site_id, "url": site.entry.url, "reachable": False,
                               "health": None, "site_id_ok": None, "reported_site_id": None, "devices": None,
                               "live_calls": None, "last_24h": None, "flags": []}
        started = time.monotonic()
        try:
            async with self._parallel:
                await asyncio.wait_for(self._probe(http, site, row), self.timeout_s)
        except TimeoutError:
            site.failed(f"no answer within {self.timeout_s:g} s")
        except SiteError as exc:
            site.failed(str(exc))
        row["ms"] = round((time.monotonic() - started) * 1000)
        if row["flags"]:
            site.failed("; ".join(row["flags"]))
        row["last_error"] = site.last_error
        row["last_error_at"] = site.last_error_at
        return row

    async def _probe(self, http: aiohttp.ClientSession, site: Site, row: dict[str, Any]) -> None:
        health, info = await asyncio.gather(get_json(http, f"{site.entry.url}/healthz", None),
                                            get_json(http, site.scoped("/api/admin/site"), site.token))
        status, body, _ = health
        row["reachable"] = True
        h = _data(body)
        row["health"] = {"status": status, "healthy": status == 200, "problems": h.get("problems", [])
                         if status == 200 or "problems" in h else [_message(body)]}
        if "site_id" in h:  # absent: a 503 before the instance serves (not_ready); nothing to compare yet
            row["reported_site_id"] = h["site_id"]
            row["site_id_ok"] = h["site_id"] == site.site_id
        if row["site_id_ok"] is False:
            row["flags"].append(f"site_id_mismatch: the instance at {site.entry.url} says it serves "
                                f"{h.get('site_id')!r}, not {site.site_id!r}")
        status, body, _ = info
        data = _data(body)
        if status == 200 and data.get("site_id") == site.site_id:
            row["devices"], row["live_calls"], row["last_24h"] = (data.get("devices"), data.get("live_calls"),
                                                                  data.get("last_24h"))
        elif status == 401:
            row["flags"].append(f"the site refused our token ({_message(body)}): check ${site.entry.token_env}")
        elif data.get("reason") != "unknown_site":  # unknown_site: flagged above already
            row["flags"].append(f"admin read failed: HTTP {status} {_message(body)}")
