"""The pure call state machine, without a broker."""

from __future__ import annotations

import pytest

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
    due_action,
    new_call,
)

DEV = Party(Role.DEVICE, "1")
R2, R3 = Party(Role.RESIDENT, "2"), Party(Role.RESIDENT, "3")
SRV = Party(Role.SERVER, "server")


def ringing():
    return new_call("call-1", "1", "101", ("2", "3"), now=100.0, ring_timeout_s=30, max_duration_s=600)


def test_answer_connects_and_cancels_the_others():
    """The first answer connects the call; the device hears who; the others and the answerer's clients: cancelled."""
    call, notices = apply(ringing(), R2, Action.ANSWERED, 101.0)
    assert call.state is CallState.CONNECTED
    assert call.answered_by == "2"
    assert call.connected_at == 101.0
    assert {(n.to, n.action, n.reason, n.resident_id) for n in notices} == {
        (DEV, "answered", None, "2"), (R3, "cancelled", "answered_elsewhere", "2"),
        (R2, "cancelled", "answered_elsewhere", "2")}
    assert call.deadline == 101.0 + 600


def test_second_answer_conflicts():
    """A second resident answering a connected call is out of order."""
    call, _ = apply(ringing(), R2, Action.ANSWERED, 101.0)
    with pytest.raises(InvalidTransition):
        apply(call, R3, Action.ANSWERED, 102.0)


def test_repeat_is_a_quiet_no_op():
    """The same party repeating its action changes nothing and tells nobody."""
    call, _ = apply(ringing(), R2, Action.ANSWERED, 101.0)
    again, notices = apply(call, R2, Action.ANSWERED, 102.0)
    assert again is call
    assert notices == []


def test_member_reject_policy_ends_only_when_nobody_rings():
    """Under `member`, each reject stops one resident; the last one ends the call."""
    call, notices = apply(ringing(), R2, Action.REJECTED, 101.0, reason="busy")
    assert call.state is CallState.RINGING
    assert call.ringing == {"3"}
    assert [(n.to, n.action, n.reason, n.resident_id) for n in notices] == [
        (DEV, "rejected", "busy", "2"), (R2, "cancelled", "rejected_elsewhere", "2")]
    call, _ = apply(call, R3, Action.TIMEOUT, 102.0)
    assert call.state is CallState.ENDED
    assert call.end_reason is EndReason.REJECTED


def test_household_reject_policy_ends_at_once():
    """Under `household`, one reject ends the call and the others hear rejected_elsewhere."""
    call, notices = apply(ringing(), R2, Action.REJECTED, 101.0, reject_policy="household")
    assert call.state is CallState.ENDED
    assert call.end_reason is EndReason.REJECTED
    assert (R3, "cancelled", "rejected_elsewhere") in {(n.to, n.action, n.reason) for n in notices}


def test_resident_words_are_relayed():
    """A resident's `timeout` reaches the device as `timeout`; its `hangup` while ringing as `rejected`/`hangup`."""
    _, notices = apply(ringing(), R2, Action.TIMEOUT, 101.0)
    n = notices[0]
    assert (n.to, n.action, n.resident_id) == (DEV, "timeout", "2")
    _, notices = apply(ringing(), R2, Action.HANGUP, 101.0, reason="pocket")
    n = notices[0]
    assert (n.to, n.action, n.reason, n.resident_id) == (DEV, "rejected", "hangup", "2")


def test_every_target_timing_out_ends_timeout():
    """A call nobody answered because every target timed out ends `timeout`; one reject among them: `rejected`."""
    call, _ = apply(ringing(), R2, Action.TIMEOUT, 101.0)
    ended, _ = apply(call, R3, Action.TIMEOUT, 102.0)
    assert ended.state is CallState.ENDED
    assert ended.end_reason is EndReason.TIMEOUT
    call, _ = apply(ringing(), R2, Action.REJECTED, 101.0)
    ended, _ = apply(call, R3, Action.TIMEOUT, 102.0)
    assert ended.end_reason is EndReason.REJECTED


def test_a_timeout_is_not_a_household_reject():
    """Under `household`, a resident's own ring timeout stops only that resident; the others keep ringing."""
    call, notices = apply(ringing(), R2, Action.TIMEOUT, 101.0, reject_policy="household")
    assert call.state is CallState.RINGING
    assert call.ringing == {"3"}
    assert [n.to for n in notices] == [DEV, R2]


def test_device_cancel_tells_every_ringing_resident():
    """A device cancel ends the call and every ringing resident hears it."""
    call, notices = apply(ringing(), DEV, Action.CANCELLED, 101.0)
    assert call.end_reason is EndReason.CANCELLED
    assert {n.to for n in notices} == {R2, R3}
    assert all(n.action == "cancelled" for n in notices)


def test_hangup_while_connected_tells_the_other_side():
    """A hangup in a connected call ends it and tells only the other party."""
    call, _ = apply(ringing(), R2, Action.ANSWERED, 101.0)
    ended, notices = apply(call, DEV, Action.HANGUP, 110.0)
    assert ended.end_reason is EndReason.HANGUP
    assert ended.ended_at == 110.0
    assert [(n.to, n.action) for n in notices] == [(R2, "hangup")]


def test_non_answerer_may_not_hang_up_a_connected_call():
    """Only the resident who answered can hang up."""
    call, _ = apply(ringing(), R2, Action.ANSWERED, 101.0)
    with pytest.raises(Forbidden):
        apply(call, R3, Action.HANGUP, 102.0)


@pytest.mark.parametrize(("actor", "action"), [(DEV, Action.ANSWERED), (R2, Action.CANCELLED), (DEV, Action.REJECTED)])
def test_role_may_not_send_action(actor, action):
    """Actions outside a role's vocabulary are forbidden in any state."""
    with pytest.raises(Forbidden):
        apply(ringing(), actor, action, 101.0)


def test_outsider_is_forbidden():
    """A resident who is not a target cannot act on the call."""
    with pytest.raises(Forbidden):
        apply(ringing(), Party(Role.RESIDENT, "9"), Action.ANSWERED, 101.0)


def test_ring_timeout_tells_everybody():
    """The ring deadline ends the call `timeout` and tells the device and every ringing resident."""
    call, notices = apply(ringing(), SRV, Action.RING_TIMEOUT, 130.0)
    assert call.end_reason is EndReason.TIMEOUT
    assert call.deadline is None
    assert {n.to for n in notices} == {DEV, R2, R3}
    assert {n.action for n in notices} == {"timeout"}


def test_max_duration_and_force():
    """Connected calls end by max duration or by force, telling both sides."""
    call, _ = apply(ringing(), R2, Action.ANSWERED, 101.0)
    ended, notices = apply(call, SRV, Action.MAX_DURATION, 701.0)
    assert ended.end_reason is EndReason.MAX_DURATION
    assert {n.to for n in notices} == {DEV, R2}
    forced, notices = apply(call, SRV, Action.FORCE, 150.0, reason="call_completed")
    assert forced.end_reason is EndReason.FORCED
    assert {(n.to, n.action, n.reason) for n in notices} == {(DEV, "hangup", "call_completed"),
                                                             (R2, "hangup", "call_completed")}


def test_party_offline_does_not_tell_the_missing_party():
    """When the answerer vanishes, only the device is told."""
    call, _ = apply(ringing(), R2, Action.ANSWERED, 101.0)
    ended, notices = apply(call, SRV, Action.PARTY_OFFLINE, 120.0, reason=R2.key)
    assert ended.end_reason is EndReason.PARTY_OFFLINE
    assert [n.to for n in notices] == [DEV]


def test_nothing_moves_an_ended_call():
    """Every action on an ended call is out of order, except a repeat."""
    call, _ = apply(ringing(), DEV, Action.CANCELLED, 101.0)
    for actor, action in [(R2, Action.ANSWERED), (DEV, Action.HANGUP), (SRV, Action.FORCE)]:
        with pytest.raises(InvalidTransition):
            apply(call, actor, action, 102.0)
    assert apply(call, DEV, Action.CANCELLED, 103.0)[1] == []


def test_table_never_leaves_ended():
    """No transition starts from the ended state."""
    assert all(state is not CallState.ENDED for state, _, _ in TRANSITIONS)


def test_door_opened_ends_a_ringing_call_and_tells_everyone_in_it():
    """A server `door_opened` (reason: the opener) ends a ringing call; ringing residents hear `cancelled`."""
    call, notices = apply(ringing(), Party(Role.SERVER, "server"), Action.DOOR_OPENED, 101.0, "resident:2")
    assert call.state is CallState.ENDED
    assert call.end_reason is EndReason.DOOR_OPENED
    heard = {(n.to.key, n.action, n.reason, n.resident_id) for n in notices}
    assert heard == {("device:1", "hangup", "door_opened", "2"), ("resident:2", "cancelled", "door_opened", "2"),
                     ("resident:3", "cancelled", "door_opened", "2")}


def test_door_opened_on_a_connected_call_hangs_up_both_parties():
    """Connected: the device and the answerer hear `hangup`, reason `door_opened`; an admin opener has no id."""
    call, _ = apply(ringing(), R2, Action.ANSWERED, 101.0)
    call, notices = apply(call, Party(Role.SERVER, "server"), Action.DOOR_OPENED, 102.0, "admin")
    assert call.end_reason is EndReason.DOOR_OPENED
    assert {(n.to.key, n.action, n.resident_id) for n in notices} == {("device:1", "hangup", None),
                                                                     ("resident:2", "hangup", None)}
    with pytest.raises(Forbidden):
        apply(ringing(), R2, Action.DOOR_OPENED, 101.0, "resident:2")


# -- several clients per resident, forwarding, do-not-disturb --------------------------------------


def forwarding(forward_after_s: float = 10.0):
    return new_call("call-1", "1", "101", ("2", "3"), now=100.0, ring_timeout_s=30, max_duration_s=600,
                    forward_to=("9",), forward_after_s=forward_after_s)


def test_answer_tells_the_answering_residents_other_clients_with_the_takers_client_id():
    """The answerer's own topic hears `cancelled`/`answered_elsewhere` naming the client that answered."""
    call, notices = apply(ringing(), R2, Action.ANSWERED, 101.0, client_id="resident-2/phone")
    assert call.answered_client == "resident-2/phone"
    assert {(n.to, n.action, n.reason, n.client_id) for n in notices} == {
        (DEV, "answered", None, "resident-2/phone"), (R3, "cancelled", "answered_elsewhere", "resident-2/phone"),
        (R2, "cancelled", "answered_elsewhere", "resident-2/phone")}


@pytest.mark.parametrize(("action", "reason"), [(Action.REJECTED, "rejected_elsewhere"),
                                                (Action.HANGUP, "rejected_elsewhere"),
                                                (Action.TIMEOUT, "timeout_elsewhere")])
def test_a_residents_decline_stops_its_other_clients(action, reason):
    """A reject, ringing hangup or own timeout on one client stops that resident's other clients ringing."""
    _, notices = apply(ringing(), R2, action, 101.0, client_id="resident-2/tablet")
    assert (R2, "cancelled", reason, "resident-2/tablet") in {(n.to, n.action, n.reason, n.client_id)
                                                              for n in notices}


def test_server_moves_name_no_client():
    """A server event (ring timeout) names no client."""
    _, notices = apply(ringing(), SRV, Action.RING_TIMEOUT, 130.0)
    assert all(n.client_id is None for n in notices)


def test_forward_deadline_rings_the_fallback_in_the_same_call():
    """Nobody answering within forward_after_s moves the call to a second ring phase on the fallback."""
    call = forwarding()
    assert call.deadline == 110.0
    assert due_action(call) is Action.FORWARD
    fwd, notices = apply(call, SRV, Action.FORWARD, 110.0)
    assert fwd.call_id == call.call_id
    assert fwd.state is CallState.RINGING
    assert fwd.ringing == {"9"}
    assert fwd.forwarded_at == 110.0
    assert fwd.deadline == 140.0
    assert due_action(fwd) is Action.RING_TIMEOUT
    assert {(n.to, n.action, n.reason, n.forward_to) for n in notices} == {
        (DEV, "forwarded", "no_answer", ("9",)), (R2, "cancelled", "forwarded", ()),
        (R3, "cancelled", "forwarded", ()), (Party(Role.RESIDENT, "9"), "incoming", None, ())}


def test_the_fallback_is_a_party_only_once_forwarded():
    """The fallback may not answer before the forward; after it, it answers and original targets may not."""
    with pytest.raises(Forbidden):
        apply(forwarding(), Party(Role.RESIDENT, "9"), Action.ANSWERED, 101.0)
    fwd, _ = apply(forwarding(), SRV, Action.FORWARD, 110.0)
    with pytest.raises(InvalidTransition):
        apply(fwd, R2, Action.ANSWERED, 111.0)
    done, notices = apply(fwd, Party(Role.RESIDENT, "9"), Action.ANSWERED, 112.0)
    assert done.state is CallState.CONNECTED
    assert done.answered_by == "9"
    assert (DEV, "answered", "9") in {(n.to, n.action, n.resident_id) for n in notices}


def test_forwarded_call_rings_out_as_timeout():
    """The second phase ends `timeout` like any unanswered call; a second forward is out of order."""
    fwd, _ = apply(forwarding(), SRV, Action.FORWARD, 110.0)
    with pytest.raises(InvalidTransition):
        apply(fwd, SRV, Action.FORWARD, 111.0)
    ended, notices = apply(fwd, SRV, Action.RING_TIMEOUT, 140.0)
    assert ended.end_reason is EndReason.TIMEOUT
    assert {n.to for n in notices} == {DEV, Party(Role.RESIDENT, "9")}


def test_every_target_timing_out_forwards_at_once():
    """When every first-phase target times out on its own, the call forwards instead of ending."""
    call, _ = apply(forwarding(), R2, Action.TIMEOUT, 101.0)
    call, notices = apply(call, R3, Action.TIMEOUT, 102.0)
    assert call.state is CallState.RINGING
    assert call.forwarded_at == 102.0
    assert call.ringing == {"9"}
    assert (DEV, "forwarded") in {(n.to, n.action) for n in notices}


def test_a_reject_does_not_forward():
    """A household that declines is not forwarded: the call ends `rejected`."""
    call, _ = apply(forwarding(), R2, Action.REJECTED, 101.0)
    call, _ = apply(call, R3, Action.TIMEOUT, 102.0)
    assert call.end_reason is EndReason.REJECTED
    assert call.forwarded_at is None


def test_dnd_targets_are_not_rung_and_all_in_dnd_ends_the_call():
    """Targets in DND never ring; when none is left the call ends `dnd` and the device hears it."""
    call = new_call("call-1", "1", "101", ("2", "3"), now=100.0, ring_timeout_s=30, max_duration_s=600,
                    dnd=("3",))
    assert call.ringing == {"2"}
    assert call.is_party(R3)
    call = new_call("call-1", "1", "101", ("2", "3"), now=100.0, ring_timeout_s=30, max_duration_s=600,
                    dnd=("2", "3"))
    ended, notices = apply(call, SRV, Action.DND, 100.0)
    assert ended.end_reason is EndReason.DND
    assert ended.ended_at == 100.0
    assert [(n.to, n.action, n.reason) for n in notices] == [(DEV, "rejected", "dnd")]
    with pytest.raises(InvalidTransition):
        apply(ringing(), SRV, Action.DND, 100.0)


def test_replaying_a_forward_is_deterministic():
    """The forward target list lives in the call, so replaying the stored events gives the same notices."""
    a = apply(forwarding(), SRV, Action.FORWARD, 110.0)
    b = apply(forwarding(), SRV, Action.FORWARD, 110.0)
    assert a == b
