"""Door unlock: a resident opens the door station that is calling it; the station confirms on its ack topic.

As on 2N and Akuvox intercoms: the door opens from the call (ringing or connected), only for the household
the station is calling (a lobby panel's unlock follows the called household), relays are numbered from 1
(2N's "switch 1..4"), and a successful unlock ends the call (2N's "end call after door open", here
`doors.unlock_ends_call`). The server sends `{"command": "unlock", ...}` on `devices/{id}/commands`
and waits `doors.ack_timeout_s` for `{"command_id", "ok", "error"?}` on `devices/{id}/commands/ack`.
Every attempt that passes the permission check is recorded in `door_events` with its outcome:
`pending` (sent, no answer yet: still so after a crash), `opened`, `failed`, `timeout` or `offline`.

A door must never open late or twice: the command expires with the ack wait (MQTT Message Expiry, an
`expires_at` in the payload, and no delivery or re-send once the wait is over, for 3.1.1 sessions too);
one unlock per door is in flight at a time (another gets 409 `unlock_in_progress`); and a station's ack
for a `pending` event (the server restarted while waiting) still records the outcome and ends the call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.config import DoorsConfig
from broker.core import topics
from broker.core.calls import CallService, Publisher, iso
from broker.core.device_kinds import in_scope
from broker.core.directory import Directory
from broker.core.errors import BadRequest, Conflict, DomainError, Forbidden, NotFound
from broker.core.group_commit import Meta
from broker.core.states import CallSession
from broker.core.store import Store
from broker.core.wire.commands import CommandAck
from broker.core.wire.doors import DoorCommand
from broker.limiter import LogThrottle

__all__ = ["AckTimeout", "DeviceFailed", "DeviceOffline", "DoorService", "Opener"]

log = logging.getLogger("intercom.doors")
_quiet = LogThrottle()


class DeviceFailed(DomainError):
    """502: the station answered that it could not open the door."""

    status = 502
    default_reason = "device_error"


class DeviceOffline(DomainError):
    """503 at once: the station is not connected, so nothing was sent."""

    status = 503
    default_reason = "device_offline"


class AckTimeout(DomainError):
    """504: the station did not confirm within `doors.ack_timeout_s`."""

    status = 504
    default_reason = "ack_timeout"


@dataclass(frozen=True, slots=True)
class Opener:
    """Who opens: a resident, or (resident_id None) the site's admin."""

    resident_id: str | None

    @property
    def by(self) -> str:
        return self.resident_id if self.resident_id is not None else "admin"

    @property
    def key(self) -> str:
        return f"resident:{self.resident_id}" if self.resident_id is not None else "admin"


class DoorService:
    def __init__(self, store: Store, directory: Directory, calls: CallService, config: DoorsConfig,
                 publisher: Publisher, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.directory = directory
        self.calls = calls
        self.config = config
        self.publisher = publisher
        self.clock = clock
        self._opening: dict[str, str] = {}  # device_id -> command_id of the unlock in flight to it
        self._pending: dict[str, tuple[str, asyncio.Future[CommandAck]]] = {}  # command_id -> (device, ack)
        # told (opener, device_id, relay, outcome, seconds taken) of every unlock attempt: audit log, metrics
        self.unlock_listeners: list[Callable[[Opener, str, int, str, float], None]] = []

    # permission --------------------------------------------------------------------------------

    def authorize(self, opener: Opener, device_id: str, call_id: str | None) -> tuple[CallSession | None, str]:
        """May `opener` open `device_id` now? Returns the call it opens from (or None) and the household
        the event is recorded under; raises NotFound, Conflict or Forbidden."""
        device = self.directory.row("devices", device_id)
        call = self._call(device_id, call_id)
        if opener.resident_id is None:  # the admin: any door, with or without a call
            return call, call.household_number if call is not None else str(device["household_number"])
        rid = opener.resident_id
        household = str(self.directory.row("residents", rid)["household_number"])
        if call is not None:
            if household != call.household_number:
                raise Forbidden(f"resident {rid} (household {household}) may not open device {device_id}: its "
                                f"call {call.call_id} is to household {call.household_number}", "other_household")
            return call, household
        if not self.config.allow_unlock_without_call:
            raise Forbidden(f"device {device_id} is not calling household {household}; a door opens from a "
                            "ringing or connected call (doors.allow_unlock_without_call is false)", "no_call")
        if not in_scope(device, household):
            raise Forbidden(f"resident {rid} (household {household}) may not open device {device_id}",
                            "other_household")
        return None, household

    def _call(self, device_id: str, call_id: str | None) -> CallSession | None:
        if call_id is None:
            return self.calls.live_call_of_device(device_id)
        call = self.calls.live(call_id)
        if call is None:
            self.calls.device_for(call_id)  # NotFound for an unknown call
            raise Conflict(f"call {call_id} has ended; a door opens from a ringing or connected call", "call_ended")
        if call.device_id != device_id:
            raise Forbidden(f"call {call_id} is not from device {device_id} (it is from device {call.device_id})")
        return call

    # unlock ---------------------------------------------------------------------------------------

    async def unlock(self, opener: Opener, device_id: str, call_id: str | None, relay: int) -> dict[str, Any]:
        """Check, send the command, wait for the station's ack, record the outcome, end the call if set.

        Every attempt, refused ones included, is told to `unlock_listeners` (the audit log, metrics)."""
        started = time.monotonic()
        try:
            result = await self._unlock(opener, device_id, call_id, relay)
        except DomainError as exc:
            self._tell(opener, device_id, relay, exc.reason or str(exc.status), time.monotonic() - started)
            raise
        self._tell(opener, device_id, relay, "opened", time.monotonic() - started)
        return result

    def _tell(self, opener: Opener, device_id: str, relay: int, outcome: str, seconds: float) -> None:
        for listener in self.unlock_listeners:
            try:
                listener(opener, device_id, relay, outcome, seconds)
            except Exception:
                log.exception("an unlock listener failed")

    async def _unlock(self, opener: Opener, device_id: str, call_id: str | None, relay: int) -> dict[str, Any]:
        if relay > self.config.max_relay:
            raise BadRequest(f"relay: must be from 1 to {self.config.max_relay} (doors.max_relay), got {relay}")
        call, household = self.authorize(opener, device_id, call_id)
        if device_id in self._opening:  # checked and claimed below with no await between: one in flight
            raise Conflict(f"device {device_id} is already opening (command {self._opening[device_id]}); "
                           "wait for its outcome", "unlock_in_progress")
        now = self.clock()
        event: dict[str, Any] = {"ts": now, "device_id": device_id, "household_number": household, "relay": relay,
                                 "by": opener.by, "call_id": call.call_id if call is not None else None,
                                 "command_id": None, "outcome": "pending", "error": None, "acked_at": None}
        if not self._online(device_id):
            self.store.add_door_event({**event, "outcome": "offline"})
            raise DeviceOffline(f"device {device_id} is offline; nothing was sent and the door stays closed")
        command_id = f"cmd-{secrets.token_hex(8)}"
        event_id = self.store.add_door_event({**event, "command_id": command_id})
        command = DoorCommand(relay=relay, by=opener.by, call_id=event["call_id"], command_id=command_id,
                              expires_at=int((now + self.config.ack_timeout_s) * 1000))
        self._opening[device_id] = command_id
        try:
            ack = await self._send(device_id, command_id, command, event_id)
        finally:
            del self._opening[device_id]
        if not ack.ok:
            self.store.update_door_event(event_id, {"outcome": "failed", "error": ack.error,
                                                    "acked_at": self.clock()})
            raise DeviceFailed(f"device {device_id} could not open relay {relay}: {ack.error or 'no reason given'}")
        self.store.update_door_event(event_id, {"outcome": "opened", "acked_at": self.clock()})
        ended = await self._after_open(opener, call, now)
        log.info("door: %s opened relay %d of device %s (call %s, event %d)", opener.key, relay, device_id,
                 event["call_id"], event_id, extra={"principal": opener.key, "call_id": event["call_id"]})
        return {"event_id": event_id, "command_id": command_id, "device_id": device_id, "relay": relay,
                "call_id": event["call_id"], "by": opener.by, "outcome": "opened", "call_ended": ended,
                "at": iso(now)}

    async def _send(self, device_id: str, command_id: str, command: DoorCommand, event_id: int) -> CommandAck:
        future: asyncio.Future[CommandAck] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = (device_id, future)
        # Never delivered nor re-sent once the wait is over (stale after a restart by its expiry alone)
        meta = Meta(expiry_s=math.ceil(self.config.ack_timeout_s), valid=lambda: command_id in self._pending)
        try:
            self.publisher.publish(topics.device_commands(device_id), command.model_dump_json().encode(), qos=1,
                                   meta=meta)
            return await asyncio.wait_for(future, self.config.ack_timeout_s)
        except TimeoutError:
            self.store.update_door_event(event_id, {"outcome": "timeout"})
            raise AckTimeout(f"device {device_id} did not confirm the unlock within {self.config.ack_timeout_s:g} s "
                             "(doors.ack_timeout_s); the door may or may not have opened") from None
        finally:
            self._pending.pop(command_id, None)

    async def _after_open(self, opener: Opener, call: CallSession | None, now: float) -> bool:
        """Mark the call's history, and end the call `door_opened` if configured; True if this ended it."""
        if not self._mark_opened(opener, call.call_id if call is not None else None, now):
            return False
        await self.calls.durable()
        return True

    def _mark_opened(self, opener: Opener, call_id: str | None, now: float) -> bool:
        """Mark the call's history; end it `door_opened` if configured and still live; True if this ended it."""
        if call_id is None:
            return False
        self.store.set_call_fields(call_id, {"door_opened_by": opener.by, "door_opened_at": now})
        if not self.config.unlock_ends_call or self.calls.live(call_id) is None:
            return False
        try:
            self.calls.door_opened(call_id, opener.key)
        except Conflict:  # it ended while the station was opening
            return False
        return True

    def _online(self, device_id: str) -> bool:
        status = self.store.get_status(device_id)
        return bool(status and status["online"])

    # the station's ack --------------------------------------------------------------------------

    def ack(self, device_id: str, ack: CommandAck) -> None:
        """A station's answer to a command; a repeat of one already taken is a quiet no-op."""
        pending = self._pending.get(ack.command_id)
        if pending is not None and pending[0] == device_id:
            if not pending[1].done():
                pending[1].set_result(ack)
            return
        row = self.store.door_event_by_command(ack.command_id)
        if row is None or row["device_id"] != device_id:
            raise NotFound(f"command '{ack.command_id}' was not sent to device {device_id}")
        if row["outcome"] == "pending":  # sent before a restart: nobody waits, the outcome still counts
            self._late_outcome(row, ack)
            return
        if row["outcome"] == "timeout":
            self.store.update_door_event(row["id"], {"acked_at": self.clock(), "error": ack.error})
            _quiet.log(log, logging.WARNING, f"late ack {device_id}",  # a station repeating it: one line per station
                       "door: device %s acked %r (ok=%s) after doors.ack_timeout_s", device_id, ack.command_id, ack.ok)
            raise Conflict(f"command '{ack.command_id}' expired: no ack within {self.config.ack_timeout_s:g} s "
                           "(doors.ack_timeout_s), the unlock was reported as timed out", "command_expired")

    def _late_outcome(self, row: Mapping[str, Any], ack: CommandAck) -> None:
        now = self.clock()
        if not ack.ok:
            self.store.update_door_event(row["id"], {"outcome": "failed", "error": ack.error, "acked_at": now})
            log.warning("door: device %s could not open relay %d (event %d, acked after a restart): %r",
                        row["device_id"], row["relay"], row["id"], ack.error)
            return
        self.store.update_door_event(row["id"], {"outcome": "opened", "acked_at": now})
        opener = Opener(None if row["by"] == "admin" else row["by"])
        ended = self._mark_opened(opener, row["call_id"], now)
        log.info("door: %s opened relay %d of device %s (call %s, event %d, acked after a restart%s)", opener.key,
                 row["relay"], row["device_id"], row["call_id"], row["id"], ", call ended" if ended else "")

    # reads -----------------------------------------------------------------------------------

    def events(self, filters: Mapping[str, str], limit: int) -> list[dict[str, Any]]:
        limit = max(1, min(limit, self.calls.config.history_limit_max))
        return [{"event_id": r["id"], "at": iso(r["ts"]), "device_id": r["device_id"],
                 "household_number": r["household_number"], "relay": r["relay"], "by": r["by"],
                 "call_id": r["call_id"], "command_id": r["command_id"], "outcome": r["outcome"],
                 "error": r["error"], "acked_at": iso(r["acked_at"])}
                for r in self.store.door_events(dict(filters), limit)]
