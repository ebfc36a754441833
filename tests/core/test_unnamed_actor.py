"""Resident actions that name nobody (the seed's controller body): who acts, and the household's moves."""

from __future__ import annotations

import pytest

from broker.core.call_log import outcomes
from broker.core.states import (
    TRANSITIONS,
    Action,
    CallState,
    EndReason,
    Forbidden,
    InvalidTransition,
    Party,
    Role,
    apply,
    new_call,
    unnamed_actor,
)

DEV = Party(Role.DEVICE, "1")
R2, R3 = Party(Role.RESIDENT, "2"), Party(Role.RESIDENT, "3")
HH = Party(Role.HOUSEHOLD, "101")


def ringing(targets: tuple[str, ...] = ("2", "3")):
    return new_call("call-1", "1", "101", targets, now=100.0, ring_timeout_s=30, max_duration_s=600)


def test_several_ringing_is_the_household():
    """While two residents ring, nobody in particular acts: the household."""
    assert unnamed_actor(ringing()) == HH


def test_one_ringing_is_that_resident():
    """A call ringing one resident (or with one left ringing) names it."""
    assert unnamed_actor(ringing(("2",))) == R2
    call, _ = apply(ringing(), R3, Action.REJECTED, 101.0)
    assert unnamed_actor(call) == R2


def test_connected_is_the_answerer():
    """A connected call names the resident who answered (its hangup is that resident's)."""
    call, _ = apply(ringing(), R2, Action.ANSWERED, 101.0)
    assert unnamed_actor(call) == R2
    ended, notices = apply(call, unnamed_actor(call), Action.HANGUP, 102.0)
    assert ended.end_reason is EndReason.HANGUP
    assert [(n.to, n.action, n.resident_id) for n in notices] == [(DEV, "hangup", "2")]


def test_household_answer():
    """The household's answer: the device hears `answered` with no resident, every ringing one `answered_elsewhere`."""
    call, notices = apply(ringing(), HH, Action.ANSWERED, 101.0)
    assert call.state is CallState.CONNECTED
    assert call.answered_by is None
    assert call.connected_at == 101.0
    assert {(n.to, n.action, n.reason, n.resident_id) for n in notices} == {
        (DEV, "answered", None, None), (R2, "cancelled", "answered_elsewhere", None),
        (R3, "cancelled", "answered_elsewhere", None)}
    assert unnamed_actor(call) == HH
    with pytest.raises(InvalidTransition):
        apply(call, R3, Action.ANSWERED, 102.0)
    # any resident of the household may hang up the call the household answered
    ended, notices = apply(call, R3, Action.HANGUP, 103.0)
    assert ended.end_reason is EndReason.HANGUP
    assert [(n.to, n.action) for n in notices] == [(DEV, "hangup")]
    assert set(outcomes(ended).values()) == {"answered_elsewhere"}


def test_household_hangup_after_household_answer():
    """The household hangs up the call it answered: the device hears `hangup`."""
    call, _ = apply(ringing(), HH, Action.ANSWERED, 101.0)
    ended, notices = apply(call, HH, Action.HANGUP, 102.0)
    assert ended.end_reason is EndReason.HANGUP
    assert [(n.to, n.action) for n in notices] == [(DEV, "hangup")]


@pytest.mark.parametrize(("action", "heard", "reason", "end"), [
    (Action.REJECTED, "rejected", "user_busy", EndReason.REJECTED),
    (Action.HANGUP, "rejected", "hangup", EndReason.REJECTED),
    (Action.TIMEOUT, "timeout", "user_busy", EndReason.TIMEOUT),
])
def test_household_ends_a_ringing_call(action: Action, heard: str, reason: str, end: EndReason):
    """The household's reject (or hangup, or timeout) ends the call whatever the reject policy; all stop ringing."""
    call, notices = apply(ringing(), HH, action, 101.0, "user_busy", reject_policy="member")
    assert call.state is CallState.ENDED
    assert call.end_reason is end
    assert notices[0].to == DEV
    assert (notices[0].action, notices[0].reason) == (heard, reason)
    assert {(n.to, n.action) for n in notices[1:]} == {(R2, "cancelled"), (R3, "cancelled")}
    if action is not Action.TIMEOUT:
        assert set(outcomes(call).values()) == {"declined"}


def test_household_of_another_call_is_not_a_party():
    """Another household cannot act on the call; a household may not cancel (a device's word)."""
    with pytest.raises(Forbidden):
        apply(ringing(), Party(Role.HOUSEHOLD, "102"), Action.ANSWERED, 101.0)
    with pytest.raises(Forbidden):
        apply(ringing(), HH, Action.CANCELLED, 101.0)


def test_every_household_move_is_in_the_table():
    """The household's moves are table rows like every other party's."""
    assert {(s, a) for (s, r, a) in TRANSITIONS if r is Role.HOUSEHOLD} == {
        (CallState.RINGING, Action.ANSWERED), (CallState.RINGING, Action.REJECTED),
        (CallState.RINGING, Action.HANGUP), (CallState.RINGING, Action.TIMEOUT),
        (CallState.CONNECTED, Action.HANGUP)}
