"""The call state machine: pure data in, pure data out. No asyncio, MQTT or sqlite here.

`apply(call, actor, action, now)` looks the move up in `TRANSITIONS`, returns the new call
and the notifications the service must send. Timers are data too: `CallSession.deadline`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from broker.core.errors import Conflict, Forbidden

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
    "due_action",
    "new_call",
    "unnamed_actor",
]


class CallState(StrEnum):
    RINGING = "ringing"
    CONNECTED = "connected"
    ENDED = "ended"


class Role(StrEnum):
    DEVICE = "device"
    RESIDENT = "resident"
    HOUSEHOLD = "household"  # an unnamed member of the called household (local-only REST, no resident named)
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
    FORWARD = "forward"  # nobody answered within forward_after_s: ring the fallback residents
    DND = "dnd"  # every target is in do-not-disturb at the call's start


class EndReason(StrEnum):
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    HANGUP = "hangup"
    FORCED = "forced"
    MAX_DURATION = "max_duration"
    PARTY_OFFLINE = "party_offline"
    DOOR_OPENED = "door_opened"
    DND = "dnd"


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
    FORWARD = "forward"
    DND = "dnd"
    # an unnamed member of the household answers; rejects, or hangs up while ringing (ended); sends `timeout`
    HOUSEHOLD_ANSWER, HOUSEHOLD_DECLINE, HOUSEHOLD_DECLINE_HANGUP, HOUSEHOLD_RING_OUT = (
        "household_answer", "household_decline", "household_decline_hangup", "household_ring_out")


# A move's effect: the fields of the call that change, and who is told what. `apply` makes the new
# call with one `replace` (a frozen dataclass copy costs ~5 µs; three per transition added up).
Result = tuple[dict[str, object], list["Notice"]]

R, C = CallState.RINGING, CallState.CONNECTED
D, U, H, S = Role.DEVICE, Role.RESIDENT, Role.HOUSEHOLD, Role.SERVER

TRANSITIONS: dict[tuple[CallState, Role, Action], Move] = {
    (R, U, Action.ANSWERED): Move.ANSWER,
    (R, U, Action.REJECTED): Move.DECLINE,
    (R, U, Action.TIMEOUT): Move.RING_OUT,
    (R, U, Action.HANGUP): Move.DECLINE_HANGUP,
    (R, D, Action.CANCELLED): Move.CANCEL,
    (R, D, Action.HANGUP): Move.CANCEL,
    (C, D, Action.HANGUP): Move.HANGUP,
    (C, U, Action.HANGUP): Move.HANGUP,
    (R, H, Action.ANSWERED): Move.HOUSEHOLD_ANSWER,
    (R, H, Action.REJECTED): Move.HOUSEHOLD_DECLINE,
    (R, H, Action.HANGUP): Move.HOUSEHOLD_DECLINE_HANGUP,
    (R, H, Action.TIMEOUT): Move.HOUSEHOLD_RING_OUT,
    (C, H, Action.HANGUP): Move.HANGUP,
    (R, S, Action.RING_TIMEOUT): Move.RING_TIMEOUT,
    (C, S, Action.MAX_DURATION): Move.MAX_DURATION,
    (R, S, Action.FORCE): Move.FORCE,
    (C, S, Action.FORCE): Move.FORCE,
    (R, S, Action.PARTY_OFFLINE): Move.PARTY_OFFLINE,
    (C, S, Action.PARTY_OFFLINE): Move.PARTY_OFFLINE,
    (R, S, Action.DOOR_OPENED): Move.DOOR_OPENED,
    (C, S, Action.DOOR_OPENED): Move.DOOR_OPENED,
    (R, S, Action.FORWARD): Move.FORWARD,
    (R, S, Action.DND): Move.DND,
}

# Which actions each role may ever send; anything else is 403 whatever the state.
ALLOWED: dict[Role, frozenset[Action]] = {
    D: frozenset({Action.HANGUP, Action.CANCELLED}),
    U: frozenset({Action.ANSWERED, Action.REJECTED, Action.TIMEOUT, Action.HANGUP}),
    H: frozenset({Action.ANSWERED, Action.REJECTED, Action.TIMEOUT, Action.HANGUP}),
    S: frozenset({Action.RING_TIMEOUT, Action.MAX_DURATION, Action.FORCE, Action.PARTY_OFFLINE,
                  Action.DOOR_OPENED, Action.FORWARD, Action.DND}),
}


class InvalidTransition(Conflict):
    """The action is out of order for the call's state: 409 `invalid_transition`, or `call_ended` when the
    call is over."""

    default_reason = "invalid_transition"


@dataclass(frozen=True, slots=True)
class Party:
    role: Role
    id: str

    @property
    def key(self) -> str:
        return f"{self.role}:{self.id}"


@dataclass(frozen=True, slots=True)
class Notice:
    """One message the service must send to one party: a control message, or (`action` "incoming") the
    incoming call of a forwarded call's fallback resident."""

    to: Party
    action: str
    reason: str | None = None
    resident_id: str | None = None
    client_id: str | None = None  # the client that took the action (None: a server event)
    forward_to: tuple[str, ...] = ()


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
    dnd: frozenset[str] = frozenset()  # targets not rung: in do-not-disturb when the call started
    forward_to: tuple[str, ...] = ()  # fallback residents, rung in a second phase if nobody answers
    forward_after_s: float = 0.0  # the first phase's length when `forward_to` is set
    forwarded_at: float | None = None
    answered_client: str | None = None  # the client (MQTT client id) that answered

    @property
    def forward_pending(self) -> bool:
        return bool(self.forward_to) and self.forwarded_at is None

    @property
    def phase_targets(self) -> tuple[str, ...]:
        """The residents of the current ring phase: the fallbacks once forwarded, else the targets."""
        return self.forward_to if self.forwarded_at is not None else self.targets

    @property
    def all_targets(self) -> tuple[str, ...]:
        """Every resident this call was meant for, fallbacks included once it was forwarded."""
        return self.targets + self.forward_to if self.forwarded_at is not None else self.targets

    @property
    def deadline(self) -> float | None:
        if self.state is CallState.RINGING:
            if self.forward_pending:
                return self.created_at + self.forward_after_s
            return (self.forwarded_at if self.forwarded_at is not None else self.created_at) + self.ring_timeout_s
        if self.state is CallState.CONNECTED and self.connected_at is not None:
            return self.connected_at + self.max_duration_s
        return None

    def is_party(self, party: Party) -> bool:
        if party.role is Role.DEVICE:
            return party.id == self.device_id
        if party.role is Role.RESIDENT:
            return party.id in self.targets or (self.forwarded_at is not None and party.id in self.forward_to)
        if party.role is Role.HOUSEHOLD:
            return party.id == self.household_number
        return True


def new_call(
    call_id: str,
    device_id: str,
    household_number: str,
    targets: tuple[str, ...],
    now: float,
    ring_timeout_s: float,
    max_duration_s: float,
    dnd: tuple[str, ...] | frozenset[str] = (),
    forward_to: tuple[str, ...] = (),
    forward_after_s: float | None = None,
) -> CallSession:
    """A ringing call. `dnd`: targets not rung; `forward_to`: fallbacks rung after `forward_after_s`
    (default: the ring timeout) if nobody answers, each phase then ringing `ring_timeout_s`."""
    skipped = frozenset(dnd) & frozenset(targets)
    return CallSession(
        call_id=call_id,
        device_id=device_id,
        household_number=household_number,
        targets=targets,
        created_at=now,
        ring_timeout_s=ring_timeout_s,
        max_duration_s=max_duration_s,
        ringing=frozenset(targets) - skipped,
        last_activity=now,
        dnd=skipped,
        forward_to=tuple(r for r in dict.fromkeys(forward_to) if r not in targets),
        forward_after_s=ring_timeout_s if forward_after_s is None else forward_after_s,
    )


def unnamed_actor(call: CallSession) -> Party:
    """Who a resident action naming nobody (the seed's controller body, local-only mode) is from: the resident
    the call's state names (the answerer, the only one ringing), else (several ring, or the household answered)
    the household, whose `answered` connects the call with `answered_by` None and whose `rejected` ends it."""
    if call.answered_by is not None:
        return Party(Role.RESIDENT, call.answered_by)
    if call.state is CallState.RINGING and len(call.ringing) == 1:
        return Party(Role.RESIDENT, next(iter(call.ringing)))
    if call.state is not CallState.RINGING and len(call.phase_targets) == 1:
        return Party(Role.RESIDENT, call.phase_targets[0])
    return Party(Role.HOUSEHOLD, call.household_number)


def due_action(call: CallSession) -> Action:
    """What the server does when the call's deadline passes."""
    if call.state is CallState.RINGING:
        return Action.FORWARD if call.forward_pending else Action.RING_TIMEOUT
    return Action.MAX_DURATION


def apply(
    call: CallSession,
    actor: Party,
    action: Action,
    now: float,
    reason: str | None = None,
    reject_policy: str = "member",
    client_id: str | None = None,
) -> tuple[CallSession, list[Notice]]:
    """Return the call after `actor` takes `action`, and who must be told what.

    `client_id` is the actor's client (one resident may have several); every notice of a party's
    action carries it, so each of that resident's clients can tell whether it took the action itself.
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
        raise InvalidTransition(f"cannot '{action}' a call that is {call.state}",
                                "call_ended" if call.state is CallState.ENDED else None)
    handler = _MOVES[move]
    changes, notices = handler(call, actor, now, reason, reject_policy,
                               client_id if actor.role is not Role.SERVER else None)
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


def _answer(call: CallSession, actor: Party, now: float, reason: str | None, _: str, cid: str | None) -> Result:
    if actor.id not in call.ringing:
        raise InvalidTransition(f"resident {actor.id} is no longer ringing on {call.call_id}")
    others = call.ringing - {actor.id}
    notices = [Notice(_device(call), "answered", reason, actor.id, cid)]
    notices += [Notice(p, "cancelled", "answered_elsewhere", actor.id, cid) for p in _residents(others)]
    # The answerer's other clients share its topic: they stop ringing; `client_id` tells the taker it was itself.
    notices.append(Notice(actor, "cancelled", "answered_elsewhere", actor.id, cid))
    return {"state": CallState.CONNECTED, "answered_by": actor.id, "answered_client": cid, "connected_at": now,
            "ringing": frozenset()}, notices


def _forward(call: CallSession, now: float, reason: str, still_ringing: frozenset[str]) -> Result:
    """The second ring phase: the device hears `forwarded`, those still ringing stop, the fallbacks ring."""
    notices = [Notice(_device(call), "forwarded", reason, forward_to=call.forward_to)]
    notices += [Notice(p, "cancelled", "forwarded") for p in _residents(still_ringing)]
    notices += [Notice(p, "incoming") for p in _residents(call.forward_to)]
    return {"forwarded_at": now, "ringing": frozenset(call.forward_to)}, notices


def _stop_ringing(call: CallSession, actor: Party, now: float, notices: list[Notice], household_wide: bool,
                  cid: str | None) -> Result:
    """`actor` stops ringing; the device hears `notices[0]`, the actor's other clients `notices[1]`. The
    last one out ends the call: `timeout` if every target timed out (or forwards it, if a fallback is
    set), else `rejected`. `household_wide` (a reject under the household policy) ends it at once and
    cancels the others."""
    if actor.id not in call.ringing:
        raise InvalidTransition(f"resident {actor.id} is no longer ringing on {call.call_id}")
    left = call.ringing - {actor.id}
    if household_wide:
        notices += [Notice(p, "cancelled", "rejected_elsewhere", actor.id, cid) for p in _residents(left)]
        return _end(EndReason.REJECTED, now), notices
    if not left:
        timed_out = notices[0].action == "timeout" and all(
            call.last_actions.get(Party(Role.RESIDENT, r).key) == "timeout"
            for r in call.phase_targets if r != actor.id and r not in call.dnd)
        if timed_out and call.forward_pending:
            changes, more = _forward(call, now, "no_answer", frozenset())
            return changes, notices + more
        return _end(EndReason.TIMEOUT if timed_out else EndReason.REJECTED, now), notices
    return {"ringing": left}, notices


def _decline(call: CallSession, actor: Party, now: float, reason: str | None, policy: str, cid: str | None) -> Result:
    notices = [Notice(_device(call), "rejected", reason, actor.id, cid),
               Notice(actor, "cancelled", "rejected_elsewhere", actor.id, cid)]
    return _stop_ringing(call, actor, now, notices, policy == "household", cid)


def _decline_hangup(call: CallSession, actor: Party, now: float, _: str | None, policy: str,
                    cid: str | None) -> Result:
    # `hangup` heard by a device always means its call is over; while ringing, other residents may
    # still ring, so the device hears the per-resident word `rejected`, reason `hangup`.
    notices = [Notice(_device(call), "rejected", "hangup", actor.id, cid),
               Notice(actor, "cancelled", "rejected_elsewhere", actor.id, cid)]
    return _stop_ringing(call, actor, now, notices, policy == "household", cid)


def _ring_out(call: CallSession, actor: Party, now: float, reason: str | None, _: str, cid: str | None) -> Result:
    notices = [Notice(_device(call), "timeout", reason, actor.id, cid),
               Notice(actor, "cancelled", "timeout_elsewhere", actor.id, cid)]
    return _stop_ringing(call, actor, now, notices, False, cid)


def _cancel(call: CallSession, _: Party, now: float, reason: str | None, __: str, cid: str | None) -> Result:
    notices = [Notice(p, "cancelled", reason, client_id=cid) for p in _residents(call.ringing)]
    return _end(EndReason.CANCELLED, now), notices


def _hangup(call: CallSession, actor: Party, now: float, reason: str | None, _: str, cid: str | None) -> Result:
    # A call the household answered (`answered_by` None) may be hung up by any of its residents.
    if actor.role is Role.RESIDENT and call.answered_by is not None and actor.id != call.answered_by:
        raise Forbidden(f"resident {actor.id} did not answer call {call.call_id}")
    others = [p for p in _in_call(call) if p != actor]
    rid = call.answered_by
    return _end(EndReason.HANGUP, now), [Notice(p, "hangup", reason, rid, cid) for p in others]


def _ring_timeout(call: CallSession, _: Party, now: float, reason: str | None, __: str, ___: str | None) -> Result:
    notices = [Notice(p, "timeout", reason or "no_answer") for p in _in_call(call)]
    return _end(EndReason.TIMEOUT, now), notices


def _max_duration(call: CallSession, _: Party, now: float, reason: str | None, __: str, ___: str | None) -> Result:
    notices = [Notice(p, "hangup", reason or "max_duration", resident_id=call.answered_by) for p in _in_call(call)]
    return _end(EndReason.MAX_DURATION, now), notices


def _force(call: CallSession, _: Party, now: float, reason: str | None, __: str, ___: str | None) -> Result:
    notices = [Notice(p, "hangup", reason or "forced", resident_id=call.answered_by) for p in _in_call(call)]
    return _end(EndReason.FORCED, now), notices


def _party_offline(call: CallSession, _: Party, now: float, reason: str | None, __: str, ___: str | None) -> Result:
    # `reason` names who went offline ("device:1"); that party is not told.
    notices = [
        Notice(p, "hangup", "party_offline", resident_id=call.answered_by) for p in _in_call(call) if p.key != reason
    ]
    return _end(EndReason.PARTY_OFFLINE, now), notices


def _door_opened(call: CallSession, _: Party, now: float, reason: str | None, __: str, ___: str | None) -> Result:
    # `reason` names who opened ("resident:2", or "admin"); everyone still in the call is told, the opener
    # too (its own screen must close): ringing residents hear `cancelled`, the others `hangup`.
    opener = reason.partition(":")[2] if reason and reason.startswith("resident:") else None
    notices = [Notice(p, "cancelled" if p.role is Role.RESIDENT and call.state is CallState.RINGING else "hangup",
                      "door_opened", resident_id=opener) for p in _in_call(call)]
    return _end(EndReason.DOOR_OPENED, now), notices
def _forward_move(call: CallSession, _: Party, now: float, reason: str | None, __: str, ___: str | None) -> Result:
    if not call.forward_pending:
        raise InvalidTransition(f"call {call.call_id} has no forwarding pending")
    return _forward(call, now, reason or "no_answer", call.ringing)


def _all_dnd(call: CallSession, _: Party, now: float, reason: str | None, __: str, ___: str | None) -> Result:
    if call.ringing or call.forwarded_at is not None:
        raise InvalidTransition(f"call {call.call_id} rings residents who are not in do-not-disturb")
    return _end(EndReason.DND, now), [Notice(_device(call), "rejected", reason or "dnd")]


def _household_answer(call: CallSession, _: Party, now: float, reason: str | None, __: str,
                      cid: str | None) -> Result:
    notices = [Notice(_device(call), "answered", reason, None, cid)]
    notices += [Notice(p, "cancelled", "answered_elsewhere", None, cid) for p in _residents(call.ringing)]
    return {"state": CallState.CONNECTED, "answered_by": None, "answered_client": cid, "connected_at": now,
            "ringing": frozenset()}, notices


def _household_ends(call: CallSession, now: float, heard: str, reason: str | None, elsewhere: str, end: EndReason,
                    cid: str | None) -> Result:
    notices = [Notice(_device(call), heard, reason, None, cid)]
    notices += [Notice(p, "cancelled", elsewhere, None, cid) for p in _residents(call.ringing)]
    return _end(end, now), notices


def _household_decline(call: CallSession, _: Party, now: float, reason: str | None, __: str,
                       cid: str | None) -> Result:
    return _household_ends(call, now, "rejected", reason, "rejected_elsewhere", EndReason.REJECTED, cid)


def _household_decline_hangup(call: CallSession, _: Party, now: float, __: str | None, ___: str,
                              cid: str | None) -> Result:
    # as a resident's hangup while ringing: the device hears `rejected`, reason `hangup`
    return _household_ends(call, now, "rejected", "hangup", "rejected_elsewhere", EndReason.REJECTED, cid)


def _household_ring_out(call: CallSession, _: Party, now: float, reason: str | None, __: str,
                        cid: str | None) -> Result:
    return _household_ends(call, now, "timeout", reason, "timeout_elsewhere", EndReason.TIMEOUT, cid)


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
    Move.FORWARD: _forward_move,
    Move.DND: _all_dnd,
    Move.HOUSEHOLD_ANSWER: _household_answer,
    Move.HOUSEHOLD_DECLINE: _household_decline,
    Move.HOUSEHOLD_DECLINE_HANGUP: _household_decline_hangup,
    Move.HOUSEHOLD_RING_OUT: _household_ring_out,
}
