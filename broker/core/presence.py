"""Which parties are connected, and what happens when one drops off mid-call.

A party may hold more than one connection for a moment: a phone that roams reconnects with the
same client id before the broker has noticed its old socket died (a client-id takeover). So a
party is counted, not flagged: it goes offline only when its last connection closes. Then a
`calls.party_offline_grace_s` timer starts; a reconnect cancels it, and on expiry the call
service ends the party's live call `party_offline`. The grace is counted per call, from the later of
the drop and the party joining that call: a call a device starts over REST just after its connection
dropped gets the full grace from its start, not the remainder of the drop's. A device's retained
status follows the count.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable

from broker.core.calls import CallService
from broker.core.states import CallSession, CallState, Party, Role
from broker.core.status import StatusService

__all__ = ["Presence"]

log = logging.getLogger("intercom.presence")
RETRY_S = 1.0


class Presence:
    def __init__(self, calls: CallService, status: StatusService, grace_s: float) -> None:
        self.calls = calls
        self.status = status
        self.grace_s = grace_s
        # open MQTT connections per party, by client id (a phone and a tablet; a takeover briefly has two of one)
        self._clients: dict[Party, Counter[str]] = {}
        self._timers: dict[Party, asyncio.TimerHandle] = {}
        self._offline_since: dict[Party, float] = {}  # parties inside a grace period: when they dropped

    def is_online(self, party: Party) -> bool:
        return party in self._clients

    def clients(self, party: Party) -> frozenset[str]:
        """The client ids of the party's open MQTT connections (a resident's phone and tablet)."""
        return frozenset(self._clients.get(party, ()))

    @property
    def pending(self) -> int:
        """How many parties are inside their grace period."""
        return len(self._timers)

    def connected(self, party: Party, client_id: str) -> None:
        held = self._clients.setdefault(party, Counter())
        held[client_id] += 1
        self._offline_since.pop(party, None)
        if (handle := self._timers.pop(party, None)) is not None:
            handle.cancel()
            log.info("%s is back within its grace period", party.key)
        if held.total() == 1 and party.role is Role.DEVICE:
            self._set_online(party, True)

    def disconnected(self, party: Party, client_id: str) -> None:
        held = self._clients.get(party)
        if held is None or held[client_id] <= 0:
            return  # a CONNECT that never got this far (refused), or already counted down
        held[client_id] -= 1
        if held[client_id] == 0:
            del held[client_id]
        if held:
            log.info("%s dropped a connection but still has %d (another client, or a client-id takeover)",
                     party.key, held.total())
            return
        del self._clients[party]
        if party.role is Role.DEVICE:
            self._set_online(party, False)
        self._start_grace(party)

    def arm_recovered(self, calls: Iterable[CallSession]) -> int:
        """After a restart nobody is connected: give each party of a recovered call its grace period."""
        armed = 0
        for call in calls:
            parties = [Party(Role.DEVICE, call.device_id)]
            if call.state is CallState.CONNECTED and call.answered_by is not None:
                parties.append(Party(Role.RESIDENT, call.answered_by))
            for party in parties:
                if not self.is_online(party) and party not in self._timers:
                    self._start_grace(party)
                    armed += 1
        return armed

    def restore_device_status(self) -> int:
        """Re-publish each stored device status (retained) as offline unless the device is already back."""
        restored = 0
        for row in self.status.store.rows("devices"):
            party = Party(Role.DEVICE, row["device_id"])
            if self.status.store.get_status(party.id) is not None and not self.is_online(party):
                self._set_online(party, False)
                restored += 1
        return restored

    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._offline_since.clear()

    def _start_grace(self, party: Party) -> None:
        if (old := self._timers.pop(party, None)) is not None:
            old.cancel()
        self._offline_since[party] = self.calls.clock()
        self._timers[party] = asyncio.get_running_loop().call_later(self.grace_s, self._expire, party)

    def _expire(self, party: Party) -> None:
        self._timers.pop(party, None)
        since = self._offline_since.pop(party, None)
        if self.is_online(party) or since is None:
            return
        loop = asyncio.get_running_loop()
        try:
            again = self.calls.party_offline(party, since, self.grace_s)
        except Exception:
            log.exception("could not end the call of offline %s; retrying in %.0f s", party.key, RETRY_S)
            self._offline_since[party] = since
            self._timers[party] = loop.call_later(RETRY_S, self._expire, party)
            return
        if again is not None:  # a call it joined after dropping: its own grace is not over yet
            self._offline_since[party] = since
            self._timers[party] = loop.call_later(max(0.0, again - self.calls.clock()), self._expire, party)

    def _set_online(self, party: Party, online: bool) -> None:
        try:
            self.status.set_online(party.id, online)
        except Exception:
            log.exception("could not record presence of %s", party.key)
