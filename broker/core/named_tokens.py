"""Named tokens: a resident may hold several (one per phone or tablet), each revoked on its own.

A named token reads `resident.<id>.<name>~<secret>`: the name travels in the token, so checking it costs one
hash, like the resident's main token (`broker.core.tokens`). Hashes live in `resident_tokens` and, for the
checks that run in worker threads, in memory.
"""

from __future__ import annotations

import re
import time
from typing import Any

from broker.core.errors import BadRequest, NotFound
from broker.core.store import Store
from broker.core.tokens import hash_token, new_token, verify_token

__all__ = ["NAME", "NamedTokens", "name_of"]

NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


def name_of(token: str) -> str | None:
    """The token's name, or None for a main (unnamed) token."""
    secret = token.rpartition(".")[2]
    name, sep, _ = secret.partition("~")
    return name if sep else None


class NamedTokens:
    def __init__(self, store: Store, iterations: int) -> None:
        self.store = store
        self.iterations = iterations
        self._hashes: dict[tuple[str, str], str] = {
            (r["resident_id"], r["name"]): r["token_hash"] for r in store.named_tokens()}

    def issue(self, resident_id: str, name: str) -> str:
        """A new token named `name` for the resident (replacing one of that name)."""
        if not NAME.fullmatch(name):
            raise BadRequest(f"name: 1-32 letters, digits, '-' or '_', got {name!r}")
        base = new_token("resident", resident_id)
        role_id, _, secret = base.rpartition(".")
        token = f"{role_id}.{name}~{secret}"
        token_hash = hash_token(token, self.iterations)
        self.store.put_named_token({"resident_id": resident_id, "name": name, "token_hash": token_hash,
                                    "created_at": time.time()})
        self._hashes[(resident_id, name)] = token_hash
        return token

    def revoke(self, resident_id: str, name: str) -> None:
        if not self.store.delete_named_token(resident_id, name):
            raise NotFound(f"resident '{resident_id}' has no token named '{name}'")
        self._hashes.pop((resident_id, name), None)

    def forget(self, resident_id: str) -> None:
        """The resident was deleted (the store dropped its rows with it)."""
        for key in [k for k in self._hashes if k[0] == resident_id]:
            del self._hashes[key]

    def has(self, resident_id: str, name: str) -> bool:
        return (resident_id, name) in self._hashes

    def verify(self, resident_id: str, name: str, token: str) -> bool:
        return verify_token(token, self._hashes.get((resident_id, name)))

    def names(self, resident_id: str) -> list[dict[str, Any]]:
        return [{"name": r["name"], "created_at": r["created_at"]} for r in self.store.named_tokens(resident_id)]
