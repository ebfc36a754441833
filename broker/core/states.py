"""The call state machine: pure data in, pure data out. No asyncio, MQTT or sqlite here.

`apply(call, actor, action, now)` looks the move up in `TRANSITIONS`, returns the new call
and the notifications the service must send. Timers are data too: `CallSession.deadline`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

__all__ = [
    "TRANSITIONS",
    "Action",
    "CallSession",
    "CallState",
    "EndReason",
    "Forbidden",
    "InvalidTransition",
    "Move",
    "Notice",
    "Party",
    "Role",
    "apply",
    "new_call",
]


class CallState(StrEnum):
    RINGING = "ringing"
    CONNECTED = "connected"
    ENDED = "ended"


class Role(StrEnum):
    DEVICE = "device"
    RESIDENT = "resident"
    SERVER = "server"


class Action(StrEnum):
    """Actions on the wire (`call_info.action`) plus the server's own events."""

    INITIATED = "initiated"
    ANSWERED = "answered"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    HANGUP = "hangup"
    CANCELLED = "cancelled"
    # server-only events
    RING_TIMEOUT = "ring_timeout"
    MAX_DURATION = "max_duration"
    FORCE = "force"
    PARTY_OFFLINE = "party_offline"
    DOOR_OPENED = "door_opened"  # a resident opened the calling door (doors.unlock_ends_call)


class EndReason(StrEnum):
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    HANGUP = "hangup"
    FORCED = "forced"
    MAX_DURATION = "max_duration"
    PARTY_OFFLINE = "party_offline"
    DOOR_OPENED = "door_opened"


class Move(StrEnum):
    """What a (state, role, action) triple does; `apply` gives each its effects."""

    ANSWER = "answer"
    DECLINE = "decline"  # a resident rejects while ringing
    DECLINE_HANGUP = "decline_hangup"  # a resident hangs up while ringing: a reject, relayed as such
    RING_OUT = "ring_out"  # a resident's own ring timeout: only that resident stops ringing
    CANCEL = "cancel"
    HANGUP = "hangup"
    RING_TIMEOUT = "ring_timeout"
    MAX_DURATION = "max_duration"
    FORCE = "force"
    PARTY_OFFLINE = "party_offline"
    DOOR_OPENED = "door_opened"


# A move's effect: the fields of the call that change, and who is told what. `apply` makes the new
# call with one `replace` (a frozen dataclass copy costs ~5 µs; three per transition added up).
Result = tuple[dict[str, object], list["Notice"]]

R, C = CallState.RINGING, CallState.CONNECTED
D, U, S = Role.DEVICE, Role.RESIDENT, Role.SERVER

TRANSITIONS: dict[tuple[CallState, Role, Action], Move] = {
    (R, U, Action.ANSWERED): Move.ANSWER,
    (R, U, Action.REJECTED): Move.DECLINE,
    (R, U, Action.TIMEOUT): Move.RING_OUT,
    (R, U, Action.HANGUP): Move.DECLINE_HANGUP,
    (R, D, Action.CANCELLED): Move.CANCEL,
    (R, D, Action.HANGUP): Move.CANCEL,
    (C, D, Action.HANGUP): Move.HANGUP,
    (C, U, Action.HANGUP): Move.HANGUP,
    (R, S, Action.RING_TIMEOUT): Move.RING_TIMEOUT,
    (C, S, Action.MAX_DURATION): Move.MAX_DURATION,
    (R, S, Action.FORCE): Move.FORCE,
    (C, S, Action.FORCE): Move.FORCE,
    (R, S, Action.PARTY_OFFLINE): Move.PARTY_OFFLINE,
    (C, S, Action.PARTY_OFFLINE): Move.PARTY_OFFLINE,
    (R, S, Action.DOOR_OPENED): Move.DOOR_OPENED,
    (C, S, Action.DOOR_OPENED): Move.DOOR_OPENED,
}

# Which actions each role may ever send; anything else is 403 whatever the state.
ALLOWED: dict[Role, frozenset[Action]] = {
    D: frozenset({Action.HANGUP, Action.CANCELLED}),
    U: frozenset({Action.ANSWERED, Action.REJECTED, Action.TIMEOUT, Action.HANGUP}),
    S: frozenset({Action.RING_TIMEOUT, Action.MAX_DURATION, Action.FORCE, Action.PARTY_OFFLINE,
                  Action.DOOR_OPENED}),
}


class InvalidTransition(Exception):
    """The action is out of order for the call's state (HTTP 409)."""


class Forbidden(Exception):
    """The party may not take this action, or is not in this call (HTTP 403)."""


@dataclass(frozen=True, slots=True)
class Party:
    role: Role
    id: str

    @property
    def key(self) -> str:
        return f"{self.role}:{self.id}"


@dataclass(frozen=True, slots=True)
class Notice:
    """One control message the service must send to one party."""

    to: Party
    action: str
    reason: str | None = None
    resident_id: str | None = None


@dataclass(frozen=True, slots=True)
class CallSession:
    call_id: str
    device_id: str
    household_number: str
    targets: tuple[str, ...]
    created_at: float
    ring_timeout_s: float
    max_duration_s: float
    state: CallState = CallState.RINGING
    ringing: frozenset[str] = frozenset()
    answered_by: str | None = None
    end_reason: EndReason | None = None
    connected_at: float | None = None
    ended_at: float | None = None
    last_activity: float = 0.0
    # last action each party took, so a repeat is a quiet no-op
    last_actions: dict[str, str] = field(default_factory=dict)

    @property
    def deadline(self) -> float | None:
        if self.state is CallState.RINGING:
            return self.created_at + self.ring_timeout_s
        if self.state is CallState.CONNECTED and self.connected_at is not None:
            return self.connected_at + self.max_duration_s
        return None

    def is_party(self, party: Party) -> bool:
        if party.role is Role.DEVICE:
            return party.id == self.device_id
        if party.role is Role.RESIDENT:
            return party.id in self.targets
        return True


def new_call(
    call_id: str,
    device_id: str,
    household_number: str,
    targets: tuple[str, ...],
    now: float,
    ring_timeout_s: float,
    max_duration_s: float,
) -> CallSession:
    return CallSession(
        call_id=call_id,
        device_id=device_id,
        household_number=household_number,
        targets=targets,
        created_at=now,
        ring_timeout_s=ring_timeout_s,
        max_duration_s=max_duration_s,
        ringing=frozenset(targets),
        last_activity=now,
    )


def apply(
    call: CallSession,
    actor: Party,
    action: Action,
    now: float,
    reason: str | None = None,
    reject_policy: str = "member",
) -> tuple[CallSession, list[Notice]]:
    """Return the call after `actor` takes `action`, and who must be told what.

    A repeat of the party's last action returns the call unchanged and no notices.
    """
    if action not in ALLOWED[actor.role]:
        raise Forbidden(f"a {actor.role} may not send '{action}'")
    if not call.is_party(actor):
        raise Forbidden(f"{actor.role} {actor.id} is not a party to call {call.call_id}")
    if actor.role is not Role.SERVER and call.last_actions.get(actor.key) == action:
        return call, []
    move = TRANSITIONS.get((call.state, actor.role, action))
    if move is None:
        raise InvalidTransition(f"cannot '{action}' a call that is {call.state}")
    handler = _MOVES[move]
    changes, notices = handler(call, actor, now, reason, reject_policy)
    if actor.role is not Role.SERVER:
        changes["last_actions"] = {**call.last_actions, actor.key: str(action)}
    changes["last_activity"] = now
    return replace(call, **changes), notices  # type: ignore[arg-type]


def _device(call: CallSession) -> Party:
    return Party(Role.DEVICE, call.device_id)


def _residents(ids: frozenset[str] | tuple[str, ...]) -> list[Party]:
    return [Party(Role.RESIDENT, r) for r in sorted(ids)]


def _end(reason: EndReason, now: float) -> dict[str, object]:
    return {"state": CallState.ENDED, "end_reason": reason, "ended_at": now, "ringing": frozenset()}


def _in_call(call: CallSession) -> list[Party]:
    """Everyone still in the call: the device plus ringing residents, or the answerer."""
    if call.state is CallState.CONNECTED and call.answered_by is not None:
        return [_device(call), Party(Role.RESIDENT, call.answered_by)]
    return [_device(call), *_residents(call.ringing)]


def _answer(call: CallSession, actor: Party, now: float, reason: str | None, _: str) -> Result:
    if actor.id not in call.ringing:
        raise InvalidTransition(f"resident {actor.id} is no longer ringing on {call.call_id}")
    others = call.ringing - {actor.id}
    notices = [Notice(_device(call), "answered", reason, resident_id=actor.id)]
    notices += [Notice(p, "cancelled", "answered_elsewhere", resident_id=actor.id) for p in _residents(others)]
    return {"state": CallState.CONNECTED, "answered_by": actor.id, "connected_at": now, "ringing": frozenset()}, notices


def _stop_ringing(call: CallSession, actor: Party, now: float, notice: Notice, household_wide: bool) -> Result:
    """`actor` stops ringing; the device hears `notice`. The last one out ends the call: `timeout` if
    every target timed out, else `rejected`. `household_wide` (a reject under the household policy)
    ends it at once and cancels the others."""
    if actor.id not in call.ringing:
        raise InvalidTransition(f"resident {actor.id} is no longer ringing on {call.call_id}")
    notices = [notice]
    left = call.ringing - {actor.id}
    if household_wide:
        notices += [Notice(p, "cancelled", "rejected_elsewhere", resident_id=actor.id) for p in _residents(left)]
        return _end(EndReason.REJECTED, now), notices
    if not left:
        timed_out = notice.action == "timeout" and all(
            call.last_actions.get(Party(Role.RESIDENT, r).key) == "timeout" for r in call.targets if r != actor.id)
        return _end(EndReason.TIMEOUT if timed_out else EndReason.REJECTED, now), notices
    return {"ringing": left}, notices


def _decline(call: CallSession, actor: Party, now: float, reason: str | None, policy: str) -> Result:
    notice = Notice(_device(call), "rejected", reason, resident_id=actor.id)
    return _stop_ringing(call, actor, now, notice, policy == "household")


def _decline_hangup(call: CallSession, actor: Party, now: float, _: str | None, policy: str) -> Result:
    # `hangup` heard by a device always means its call is over; while ringing, other residents may
    # still ring, so the device hears the per-resident word `rejected`, reason `hangup`.
    notice = Notice(_device(call), "rejected", "hangup", resident_id=actor.id)
    return _stop_ringing(call, actor, now, notice, policy == "household")


def _ring_out(call: CallSession, actor: Party, now: float, reason: str | None, _: str) -> Result:
    notice = Notice(_device(call), "timeout", reason, resident_id=actor.id)
    return _stop_ringing(call, actor, now, notice, household_wide=False)


def _cancel(call: CallSession, _: Party, now: float, reason: str | None, __: str) -> Result:
    notices = [Notice(p, "cancelled", reason) for p in _residents(call.ringing)]
    return _end(EndReason.CANCELLED, now), notices


def _hangup(call: CallSession, actor: Party, now: float, reason: str | None, _: str) -> Result:
    if actor.role is Role.RESIDENT and actor.id != call.answered_by:
        raise Forbidden(f"resident {actor.id} did not answer call {call.call_id}")
    others = [p for p in _in_call(call) if p != actor]
    rid = call.answered_by
    return _end(EndReason.HANGUP, now), [Notice(p, "hangup", reason, resident_id=rid) for p in others]


def _ring_timeout(call: CallSession, _: Party, now: float, reason: str | None, __: str) -> Result:
    notices = [Notice(p, "timeout", reason or "no_answer") for p in _in_call(call)]
    return _end(EndReason.TIMEOUT, now), notices


def _max_duration(call: CallSession, _: Party, now: float, reason: str | None, __: str) -> Result:
    notices = [Notice(p, "hangup", reason or "max_duration", resident_id=call.answered_by) for p in _in_call(call)]
    return _end(EndReason.MAX_DURATION, now), notices


def _force(call: CallSession, _: Party, now: float, reason: str | None, __: str) -> Result:
    notices = [Notice(p, "hangup", reason or "forced", resident_id=call.answered_by) for p in _in_call(call)]
    return _end(EndReason.FORCED, now), notices


def _party_offline(call: CallSession, _: Party, now: float, reason: str | None, __: str) -> Result:
    # `reason` names who went offline ("device:1"); that party is not told.
    notices = [
        Notice(p, "hangup", "party_offline", resident_id=call.answered_by) for p in _in_call(call) if p.key != reason
    ]
    return _end(EndReason.PARTY_OFFLINE, now), notices


def _door_opened(call: CallSession, _: Party, now: float, reason: str | None, __: str) -> Result:
    # `reason` names who opened ("resident:2", or "admin"); everyone still in the call is told, the opener
    # too (its own screen must close): ringing residents hear `cancelled`, the others `hangup`.
    opener = reason.partition(":")[2] if reason and reason.startswith("resident:") else None
    notices = [Notice(p, "cancelled" if p.role is Role.RESIDENT and call.state is CallState.RINGING else "hangup",
                      "door_opened", resident_id=opener) for p in _in_call(call)]
    return _end(EndReason.DOOR_OPENED, now), notices


_MOVES = {
    Move.ANSWER: _answer,
    Move.DECLINE: _decline,
    Move.DECLINE_HANGUP: _decline_hangup,
    Move.RING_OUT: _ring_out,
    Move.CANCEL: _cancel,
    Move.HANGUP: _hangup,
    Move.RING_TIMEOUT: _ring_timeout,
    Move.MAX_DURATION: _max_duration,
    Move.FORCE: _force,
    Move.PARTY_OFFLINE: _party_offline,
    Move.DOOR_OPENED: _door_opened,
}
