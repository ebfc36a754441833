"""Households, residents and devices, and who a token belongs to.

Re-issuing or deleting a resident's or device's token revokes it: REST refuses it at once, and the
callbacks registered with `on_revoked` (the broker: close that principal's MQTT sessions) run
synchronously inside the write, before the new token is returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from broker.config import SiteConfig
from broker.core.device_kinds import check_scope
from broker.core.errors import BadRequest, Conflict, NotFound, Unauthorized
from broker.core.named_tokens import NamedTokens, name_of
from broker.core.store import DIRECTORY, Store
from broker.core.tokens import Principal, hash_token, new_token, parse_token, verify_token

__all__ = ["Directory"]

log = logging.getLogger("intercom.directory")

SINGULAR = {"households": "household", "residents": "resident", "devices": "device"}
_CACHE_MAX = 4096


class Directory:
    def __init__(self, store: Store, iterations: int, admin_token: str | None) -> None:
        self.store = store
        self.iterations = iterations
        self._admin_token = admin_token
        # sha256(token) -> principal: a REST call must not pay PBKDF2 each time.
        self._verified: dict[bytes, Principal] = {}
        # The directory is small and read on every call: serve reads from memory, write through.
        self._rows: dict[str, dict[str, dict[str, Any]]] = {
            kind: {r[pk]: r for r in store.rows(kind)} for kind, pk in DIRECTORY.items()
        }
        self._index: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._revoked: list[Callable[[Principal], None]] = []
        # bumped by every revocation: a token check that ran across one is done again (it may have
        # read the old hash in its worker thread)
        self._revocations = 0
        self.named = NamedTokens(store, iterations)  # a resident's extra tokens, one per phone or tablet

    def on_revoked(self, callback: Callable[[Principal], None]) -> None:
        """Call `callback(principal)` whenever a principal's token is re-issued or the principal deleted."""
        self._revoked.append(callback)

    # the write-through cache ---------------------------------------------------------------

    def _get(self, kind: str, ident: str) -> dict[str, Any] | None:
        return self._rows[kind].get(ident)

    def _members(self, kind: str, household_number: str | None) -> list[dict[str, Any]]:
        if household_number is None:
            return sorted(self._rows[kind].values(), key=lambda r: r[DIRECTORY[kind]])
        index = self._index.get(kind)
        if index is None:  # rebuilt lazily after a write: writes are rare, calls are not
            index = {}
            for r in sorted(self._rows[kind].values(), key=lambda r: r[DIRECTORY[kind]]):
                index.setdefault(r["household_number"], []).append(r)
            self._index[kind] = index
        return index.get(household_number, [])

    def _put(self, kind: str, row: dict[str, Any]) -> None:
        if kind == "devices":
            row = {"kind": None, "households": None, **row}
        self.store.put(kind, row)
        self._rows[kind][row[DIRECTORY[kind]]] = row
        self._index.pop(kind, None)

    # reads ---------------------------------------------------------------------------------

    def get(self, kind: str, ident: str) -> dict[str, Any]:
        row = self._get(kind, ident)
        if row is None:
            raise NotFound(f"{SINGULAR[kind]} '{ident}' not found")
        return _public(row)

    def list_all(self, kind: str, household_number: str | None = None) -> list[dict[str, Any]]:
        return [_public(r) for r in self._members(kind, household_number)]

    def row(self, kind: str, ident: str) -> Mapping[str, Any]:
        """The cached row itself, read-only and token hash included: for the call path, which copies nothing."""
        row = self._get(kind, ident)
        if row is None:
            raise NotFound(f"{SINGULAR[kind]} '{ident}' not found")
        return row

    def has(self, kind: str, ident: str) -> bool:
        return self._get(kind, ident) is not None

    def device(self, device_id: str) -> dict[str, Any]:
        return self.get("devices", device_id)

    def resident(self, resident_id: str) -> dict[str, Any]:
        return self.get("residents", resident_id)

    def resident_ids(self, household_number: str) -> list[str]:
        return [r["resident_id"] for r in self._members("residents", household_number)]

    # writes --------------------------------------------------------------------------------

    def add_household(self, household_number: str, name: str | None) -> dict[str, Any]:
        if self._get("households", household_number) is not None:
            raise Conflict(f"household '{household_number}' already exists", "already_exists")
        row = {"household_number": household_number, "name": name, "created_at": time.time()}
        self._put("households", row)
        return _public(row)

    def add_member(self, kind: str, ident: str, household_number: str, name: str | None,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create a resident or device (with `extra` columns, e.g. a device's `emergency`) and return it
        with its token, shown this once."""
        if self._get("households", household_number) is None:
            raise NotFound(f"household '{household_number}' not found")
        if self._get(kind, ident) is not None:
            raise Conflict(f"{SINGULAR[kind]} '{ident}' already exists", "already_exists")
        token = new_token(SINGULAR[kind], ident)
        row = {DIRECTORY[kind]: ident, "household_number": household_number, "name": name,
               "token_hash": hash_token(token, self.iterations), "created_at": time.time(), **(extra or {})}
        self._put(kind, row)
        return {DIRECTORY[kind]: ident, "household_number": household_number, "token": token}

    def reissue_token(self, kind: str, ident: str) -> dict[str, Any]:
        row = self.get(kind, ident)
        token = new_token(SINGULAR[kind], ident)
        token_hash = hash_token(token, self.iterations)
        self.store.set_token_hash(kind, ident, token_hash)
        self._rows[kind][ident] = {**self._rows[kind][ident], "token_hash": token_hash}
        self._index.pop(kind, None)
        self._revoke(SINGULAR[kind], ident)
        return {DIRECTORY[kind]: ident, "household_number": row["household_number"], "token": token}

    def update(self, kind: str, ident: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change an entry's `name` (a member's `household_number`, a device's `emergency`); the token stays
        valid."""
        row = self._get(kind, ident)
        if row is None:
            raise NotFound(f"{SINGULAR[kind]} '{ident}' not found")
        if "household_number" in changes and kind == "households":
            raise BadRequest("a household's number is its id and cannot change")
        target = changes.get("household_number")
        if target is not None and self._get("households", target) is None:
            raise NotFound(f"household '{target}' not found")
        if "emergency" in changes and kind != "devices":
            raise BadRequest("emergency: only devices have an emergency flag")
        updated = {**row, **{k: v for k, v in changes.items() if k in ("name", "household_number")}}
        if changes.get("emergency") is not None:
            updated["emergency"] = int(changes["emergency"])
        self.store.upsert(kind, updated)
        self._rows[kind][ident] = updated
        self._index.pop(kind, None)
        return _public(updated)

    def delete(self, kind: str, ident: str) -> None:
        if kind == "households" and (self._members("residents", ident) or self._members("devices", ident)):
            raise Conflict(f"household '{ident}' still has residents or devices; delete them first", "not_empty")
        if not self.store.delete(kind, ident):
            raise NotFound(f"{SINGULAR[kind]} '{ident}' not found")
        self._rows[kind].pop(ident, None)
        self._index.pop(kind, None)
        if kind == "residents":
            self.named.forget(ident)
        if kind != "households":
            self._revoke(SINGULAR[kind], ident)

    def seed_site(self, site: SiteConfig) -> None:
        """Declare broker.yaml's `site:` directory; existing rows (and their tokens) are kept."""
        now = time.time()
        for hh in site.households:
            if self._get("households", hh.household_number) is None:
                self._put("households", {"household_number": hh.household_number, "name": hh.name,
                                              "created_at": now})
            for kind, members in (("residents", hh.residents), ("devices", hh.devices)):
                for m in members:
                    ident = m.resident_id if kind == "residents" else m.device_id  # type: ignore[union-attr]
                    existing = self._get(kind, ident)
                    # written in broker.yaml, the flag wins at every start; left out, the stored one is kept
                    extra = ({"emergency": int(m.emergency)}  # type: ignore[union-attr]
                             if kind == "devices" and "emergency" in m.model_fields_set else {})
                    if existing is None:
                        self._put(kind, {DIRECTORY[kind]: ident, "household_number": hh.household_number,
                                              "name": m.name, "token_hash": None, "created_at": now, **extra})
                    elif existing["household_number"] != hh.household_number:
                        raise BadRequest(f"site: {SINGULAR[kind]} '{ident}' is in household "
                                         f"'{existing['household_number']}' already")
                    elif extra and bool(existing.get("emergency")) != bool(extra["emergency"]):
                        self.store.upsert(kind, {DIRECTORY[kind]: ident, **extra})  # broker.yaml declares it
                        self._rows[kind][ident] = {**existing, **extra}
        self._seed_kinds(site)

    def _seed_kinds(self, site: SiteConfig) -> None:
        """`kind` / `households` written in broker.yaml win over the stored ones (left out: kept)."""
        for hh in site.households:
            for d in hh.devices:
                given = d.model_fields_set & {"kind", "households"}
                if given:
                    row = self.row("devices", d.device_id)
                    kind = d.kind if "kind" in given else row.get("kind")
                    self.set_device_kind(d.device_id, kind, d.households, known_households=False)

    def check_device_kind(self, kind: str | None, households: list[str] | None, known_households: bool = True) -> None:
        check_scope(kind, households)
        if known_households:
            for number in households or ():
                if self._get("households", number) is None:
                    raise NotFound(f"household '{number}' not found")

    def set_device_kind(self, device_id: str, kind: str | None, households: list[str] | None,
                        known_households: bool = True) -> dict[str, Any]:
        """Make a device a unit `door` station or a `lobby` panel (calling any household, or `households`)."""
        self.row("devices", device_id)
        self.check_device_kind(kind, households, known_households)
        values = {"kind": kind, "households": list(households) if households is not None else None}
        self.store.update("devices", device_id, values)
        self._rows["devices"][device_id] = {**self._rows["devices"][device_id], **values}
        self._index.pop("devices", None)
        return self.get("devices", device_id)

    # authentication --------------------------------------------------------------------------

    async def authenticate(self, token: str) -> Principal:
        """Resolve a bearer token off the event loop; raise Unauthorized if it is not valid.

        A principal returned here held this token at the moment of return: a revocation that happened
        while the hash was being checked in its thread makes the check run again."""
        key = hashlib.sha256(token.encode()).digest()
        principal = self._verified.get(key)
        if principal is None:
            while True:
                seen = self._revocations
                principal = await asyncio.to_thread(self._check_uncached, token)
                if seen == self._revocations:
                    break
            if principal is not None:
                self._remember(key, principal)
        if principal is None:
            raise Unauthorized("invalid or expired token")
        return principal

    def _remember(self, key: bytes, principal: Principal) -> None:
        if len(self._verified) >= _CACHE_MAX:
            self._verified.clear()
        self._verified[key] = principal

    def _check_uncached(self, token: str) -> Principal | None:
        if self._admin_token and hmac.compare_digest(token.encode(), self._admin_token.encode()):
            return Principal("admin", "admin")
        principal = parse_token(token)
        if principal is None or principal.role not in ("device", "resident"):
            return None
        row = self._get(f"{principal.role}s", principal.id)
        if row is None:
            return None
        name = name_of(token)
        if name is not None:
            return principal if principal.role == "resident" and self.named.verify(principal.id, name, token) else None
        if not verify_token(token, row.get("token_hash")):
            return None
        return principal

    def issue_named_token(self, resident_id: str, name: str) -> dict[str, Any]:
        """A resident's token for one phone or tablet; re-issuing a name revokes that name's old token only."""
        self.resident(resident_id)
        replaced = self.named.has(resident_id, name)
        token = self.named.issue(resident_id, name)
        if replaced:
            self._revoke("resident", resident_id)
        return {"resident_id": resident_id, "name": name, "token": token}

    def revoke_named_token(self, resident_id: str, name: str) -> None:
        """The resident's other tokens keep working (its open MQTT sessions are closed once; they reconnect)."""
        self.resident(resident_id)
        self.named.revoke(resident_id, name)
        self._revoke("resident", resident_id)

    def _revoke(self, role: str, ident: str) -> None:
        self._revocations += 1
        self._verified = {k: p for k, p in self._verified.items() if not (p.role == role and p.id == ident)}
        principal = Principal(role, ident)
        for callback in self._revoked:
            try:
                callback(principal)
            except Exception:  # the token is revoked either way; a failing listener must not undo the write
                log.exception("revocation listener failed for %s %s", role, ident)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "token_hash"}
