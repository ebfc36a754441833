"""Per-principal quotas on what persistent sessions keep: QoS 2 awaiting PUBREL, offline queues, in-flight.

A persistent session outlives its connection, in memory and in `sessions.db`, so one principal opening many
client ids (`{role}-{id}/<suffix>`) could fill both. As Mosquitto's `max_queued_bytes` / `max_inflight_bytes`
bound one client, these bound one principal (all its client ids together): `Quotas` keeps the payload bytes
each client id holds, by kind, and their sum per principal. The durable containers of
`session_persistence` report every message they take or let go (`add`); a client id's whole share is
released when its stored state is forgotten or its containers are made anew (`release`).
What would pass a quota is refused by the caller (MQTT 5: reason code 0x97) or dropped with a log line.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HELD", "INFLIGHT", "QUEUED", "QuotaLimits", "Quotas", "owner_of", "principal_of"]

HELD, QUEUED, INFLIGHT = 0, 1, 2  # incoming QoS 2 awaiting PUBREL, offline queue, sent and unacknowledged
_KINDS = ("held QoS 2", "queued", "in-flight")


def principal_of(client_id: str, username: str | None) -> str:
    """The principal a session counts against: for an authenticated one, what its client id has before
    `/<suffix>` (auth binds ids to `{role}-{id}`); an anonymous one (local-only mode) is its own."""
    return client_id.partition("/")[0] if username else client_id


def owner_of(client_id: str, principal: str) -> bool:
    """Whether `client_id` is one of `principal`'s client ids."""
    return client_id == principal or (client_id.startswith(principal) and client_id[len(principal):][:1] == "/")


@dataclass(frozen=True)
class QuotaLimits:
    """Bytes one principal's persistent sessions may hold, by kind; `limits:` in broker.yaml fills them."""

    held_bytes: int = 4 * 1024 * 1024
    queued_bytes: int = 16 * 1024 * 1024
    inflight_bytes: int = 16 * 1024 * 1024

    def of(self, kind: int) -> int:
        return (self.held_bytes, self.queued_bytes, self.inflight_bytes)[kind]


class Quotas:
    """Payload bytes held per client id and per principal, by kind."""

    def __init__(self, limits: QuotaLimits | None = None) -> None:
        self.limits = limits or QuotaLimits()
        self._clients: dict[str, tuple[str, list[int]]] = {}  # client id -> (principal, bytes by kind)
        self._principals: dict[str, list[int]] = {}

    def fits(self, principal: str, kind: int, nbytes: int) -> bool:
        """Whether `principal` may hold `nbytes` more of `kind`."""
        used = self._principals.get(principal)
        return (used[kind] if used is not None else 0) + nbytes <= self.limits.of(kind)

    def used(self, principal: str, kind: int) -> int:
        """Bytes of `kind` held by `principal`'s sessions."""
        used = self._principals.get(principal)
        return used[kind] if used is not None else 0

    def add(self, principal: str, client_id: str, kind: int, nbytes: int) -> None:
        """`client_id` took (`nbytes` > 0) or let go of (< 0) payload bytes of `kind`."""
        entry = self._clients.get(client_id)
        if entry is None or entry[0] != principal:
            self.release(client_id)
            entry = self._clients[client_id] = (principal, [0, 0, 0])
        total = self._principals.get(principal)
        if total is None:
            total = self._principals[principal] = [0, 0, 0]
        entry[1][kind] += nbytes
        total[kind] += nbytes

    def release(self, client_id: str) -> None:
        """Everything `client_id` held is gone (its stored state forgotten, or its containers made anew)."""
        entry = self._clients.pop(client_id, None)
        if entry is None:
            return
        principal, mine = entry
        total = self._principals[principal]
        for kind, nbytes in enumerate(mine):
            total[kind] -= nbytes
        if not any(total):
            del self._principals[principal]

    @staticmethod
    def name(kind: int) -> str:
        return _KINDS[kind]
