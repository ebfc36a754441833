"""The integrator's own bearer token, kept only as a salted PBKDF2 hash (as the sites keep theirs)."""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import web
from aiohttp.typedefs import Middleware

from broker.core.errors import Unauthorized
from broker.core.tokens import hash_token, verify_token
from http_api.envelope import Handler

__all__ = ["PUBLIC", "IntegratorAuth", "auth_middleware"]

# No token needed: the page, its files and the integrator's own health.
PUBLIC = frozenset({"/", "/healthz"})
PUBLIC_PREFIX = "/integrator/"
_CACHE_MAX = 64


class IntegratorAuth:
    """Checks a bearer token against the hash; a token that verified once is remembered by its SHA-256 (one PBKDF2
    per token, not per request). PBKDF2 runs off the event loop, at most two at a time."""

    def __init__(self, token_or_hash: str, iterations: int) -> None:
        # the environment may hold the `$7$` hash itself, so the integrator host never sees the token
        self._hash = token_or_hash if token_or_hash.startswith("$7$") else hash_token(token_or_hash, iterations)
        self._verified: set[bytes] = set()
        self._hashing = asyncio.Semaphore(2)

    async def check(self, token: str) -> bool:
        key = hashlib.sha256(token.encode()).digest()
        if key in self._verified:
            return True
        async with self._hashing:
            good = await asyncio.to_thread(verify_token, token, self._hash)
        if good:
            if len(self._verified) >= _CACHE_MAX:
                self._verified.clear()
            self._verified.add(key)
        return good



def auth_middleware(auth: IntegratorAuth) -> Middleware:
    """Every path but the page, its files and /healthz needs the integrator's bearer token."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC or request.path.startswith(PUBLIC_PREFIX):
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token (the integrator's)")
        if not await auth.check(token.strip()):
            raise Unauthorized("invalid integrator token")
        return await handler(request)

    return check
