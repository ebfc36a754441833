"""Which call-service instance serves a site: a lease row per site in PostgreSQL, renewed by its holder.

Several instances of a site run against one PostgreSQL store (`store.url`) in bridge mode. Only the holder of
the site's lease subscribes to the site's call topics and runs its calls and timers; the others wait as
standbys. The holder renews the lease every `ttl/3`; a standby tries to take it every `ttl/3` and succeeds once
it has expired (`expires_at` in the database's clock, so the hosts' clocks do not matter). An instance that
takes the lease starts exactly as a restarted one does: it recovers the live calls and their timers from the
database (CallService.recover). So after a holder dies (kill -9, host down) its site is served again within
about `ttl + ttl/3` plus the start-up.

A holder that cannot renew in time (the database unreachable, the process stalled past expiry) must assume
another instance has taken over: it stops serving at once (`on_lost`), and the process exits with an error so
the service manager restarts it as a standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable

import psycopg

from broker.db_open import StorageError
from broker.migrations import POSTGRES_INTERCOM, upgrade_postgres
from broker.scale.pg_store import PgConnection, redact

__all__ = ["SiteLease"]

log = logging.getLogger("intercom.lease")

_NOW = "extract(epoch from clock_timestamp())"
# Take the row if it is free, expired, or already ours (a renewal); RETURNING nothing: another holder has it.
_TAKE = (f"INSERT INTO site_leases (site_id, holder, expires_at, acquired_at) VALUES (?, ?, {_NOW} + ?, {_NOW})"
         " ON CONFLICT (site_id) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at,"
         " acquired_at = CASE WHEN site_leases.holder = EXCLUDED.holder THEN site_leases.acquired_at"
         " ELSE EXCLUDED.acquired_at END"
         f" WHERE site_leases.holder = EXCLUDED.holder OR site_leases.expires_at < {_NOW} RETURNING holder")


def default_holder() -> str:
    """host/pid/random: unique per process, and says which process holds a site."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


class SiteLease:
    """The lease of one site (`site` "" when there is no --site-id: the whole broker is one site)."""

    def __init__(self, url: str, site: str, ttl_s: float = 6.0, holder: str | None = None) -> None:
        if not 0.5 <= ttl_s <= 300:
            raise ValueError(f"--lease-ttl must be 0.5-300 s, got {ttl_s}")
        self.url = url
        self.site = site
        self.ttl_s = ttl_s
        self.holder = holder or default_holder()
        self.conn: PgConnection | None = None  # its own connection: never inside the store's group transaction
        self.held_until = 0.0  # monotonic time until which the lease is surely ours
        self.acquired_at: float | None = None
        self._renewer: asyncio.Task[None] | None = None

    def _connection(self) -> PgConnection:
        if self.conn is None:
            self.conn = PgConnection(self.url)
            upgrade_postgres(self.conn, POSTGRES_INTERCOM)  # the site_leases table (idempotent, under a lock)
        return self.conn

    def bind(self) -> None:
        """The tables hold one site's directory and calls (no site column): the first instance binds the database
        to its site, and an instance of another site is refused rather than serving (and recovering) its calls."""
        try:
            conn = self._connection()
            conn.execute(f"INSERT INTO site_binding (site_id, bound_at) VALUES (?, {_NOW}) ON CONFLICT DO NOTHING",
                         [self.site])
            row = conn.execute("SELECT site_id FROM site_binding").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the store {redact(self.url)}: {exc}") from exc
        bound = None if row is None else row[0]
        if bound != self.site:
            raise StorageError(f"the store {redact(self.url)} holds site {bound or '(none)'!r}, not "
                               f"{self.site or '(none)'!r}: give each site its own database, or its own schema "
                               "(?options=-csearch_path%3D<schema> in store.url)")

    def try_take(self) -> bool:
        """One attempt to take or renew the lease; False if another holder has it (or the database failed)."""
        started = time.monotonic()
        try:
            row = self._connection().execute(_TAKE, [self.site, self.holder, self.ttl_s]).fetchone()
        except Exception as exc:  # a database error: not ours, try again later (sqlite3-style from the adapter)
            log.warning("lease of site %r on %s: %s", self.site, redact(self.url), exc)
            self._drop_connection()
            return False
        if row is None:
            return False
        self.held_until = started + self.ttl_s  # counted from before the statement: never longer than the row
        return True

    def current(self) -> tuple[str, float] | None:
        """(holder, seconds left) of the site's lease, if any."""
        row = self._connection().execute(f"SELECT holder, expires_at - {_NOW} FROM site_leases WHERE site_id = ?",
                                         [self.site]).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    async def acquire(self) -> float:
        """Wait until the lease is ours (a standby until then); returns the seconds waited."""
        started = time.monotonic()
        announced = False
        while not self.try_take():
            if not announced:
                held = self._safe_current()
                log.info("standby for site %r: the lease is held by %s (expires in %.1f s)", self.site,
                         held[0] if held else "?", held[1] if held else 0.0)
                announced = True
            await asyncio.sleep(self.ttl_s / 3)
        waited = time.monotonic() - started
        self.acquired_at = time.time()
        log.warning("took the lease of site %r as %s after %.2f s: serving it", self.site, self.holder, waited)
        return waited

    def keep(self, on_lost: Callable[[str], None]) -> None:
        """Renew every ttl/3 in the background; `on_lost(reason)` once the lease can no longer be counted on."""
        self._renewer = asyncio.create_task(self._renew(on_lost))

    async def _renew(self, on_lost: Callable[[str], None]) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            if self.try_take():
                continue
            # not renewed: still ours until held_until, unless another instance already has it
            held = self._safe_current()
            if held is not None and held[0] != self.holder:
                on_lost(f"the lease of site {self.site!r} is held by {held[0]}")
                return
            if time.monotonic() + self.ttl_s / 3 >= self.held_until:  # the next try would come too late
                on_lost(f"could not renew the lease of site {self.site!r} within its {self.ttl_s} s")
                return

    def _safe_current(self) -> tuple[str, float] | None:
        try:
            return self.current()
        except Exception:
            self._drop_connection()
            return None

    def _drop_connection(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            self.conn = None

    async def release(self) -> None:
        """Stop renewing and give the lease up (a clean stop: a standby takes over at its next try)."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        if self.conn is not None and self.acquired_at is not None:
            try:
                self.conn.execute("DELETE FROM site_leases WHERE site_id = ? AND holder = ?", [self.site, self.holder])
            except Exception as exc:
                log.warning("could not release the lease of site %r: %s", self.site, exc)
        self._drop_connection()
