"""Access tokens: `<role>.<id>.<secret>`, stored only as salted PBKDF2-SHA512 hashes.

The principal is readable from the token so a check costs one hash, not a scan.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote, unquote

from broker.core.states import Party, Role

__all__ = ["Principal", "hash_token", "new_token", "parse_token", "verify_token"]

ROLES = ("admin", "device", "resident", "integrator")


@dataclass(frozen=True, slots=True)
class Principal:
    role: str
    id: str

    def party(self) -> Party | None:
        """The call party this principal speaks for (devices and residents; admins and integrators none)."""
        if self.role in ("device", "resident"):
            return Party(Role(self.role), self.id)
        return None


def new_token(role: str, ident: str) -> str:
    # The id is percent-encoded so a token stays ASCII (it travels in HTTP headers) whatever the id.
    return f"{role}.{quote(ident, safe=':@')}.{secrets.token_urlsafe(32)}"


def parse_token(token: str) -> Principal | None:
    role, _, rest = token.partition(".")
    ident, _, secret = rest.rpartition(".")
    if role not in ROLES or not ident or len(secret) < 16:
        return None
    try:
        return Principal(role, unquote(ident, errors="strict"))
    except UnicodeDecodeError:
        return None


def hash_token(token: str, iterations: int) -> str:
    """Mosquitto-style `$7$` PBKDF2-SHA512 string: `$7$<iterations>$<salt b64>$<hash b64>`."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", token.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_token(token: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        _, kind, iterations, salt, digest = stored.split("$")
        if kind != "7":
            return False
        computed = hashlib.pbkdf2_hmac("sha512", token.encode(), base64.b64decode(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))
