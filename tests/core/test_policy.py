"""The authorization table: who may act as, access and administer what (pure, no broker)."""

from __future__ import annotations

import pytest

from broker.core import policy
from broker.core.errors import Forbidden
from broker.core.policy import SITE, Act, Subject, may, own_topics
from broker.core.states import Party, Role
from broker.core.tokens import Principal

ADMIN = Principal("admin", "admin")
DEVICE_1 = Principal("device", "1")
RESIDENT_2 = Principal("resident", "2")  # lives in household 101
INTEGRATOR = Principal("integrator", "bms")
EVERYONE = [None, ADMIN, DEVICE_1, RESIDENT_2, INTEGRATOR]


@pytest.mark.parametrize("principal", [None, ADMIN])
@pytest.mark.parametrize("act", list(Act))
@pytest.mark.parametrize("subject", [SITE, Subject("device", "9"), Subject("resident", "9"),
                                     Subject("household", "999"), Subject("device", "9", "999")])
def test_admin_and_local_only_anonymous_may_do_anything(principal: Principal | None, act: Act,
                                                        subject: Subject) -> None:
    """The admin (the console simulator) and an anonymous local-only caller pass every check."""
    assert may(principal, act, subject)


@pytest.mark.parametrize(("principal", "subject", "allowed"), [
    (DEVICE_1, Subject("device", "1"), True),
    (DEVICE_1, Subject("device", "2"), False),
    (DEVICE_1, Subject("resident", "1"), False),  # same id, other kind
    (RESIDENT_2, Subject("resident", "2"), True),
    (RESIDENT_2, Subject("resident", "3"), False),
    (RESIDENT_2, Subject("device", "2"), False),
    (RESIDENT_2, Subject("household", "101"), False),  # acting unnamed for its household is the anonymous path's
    (INTEGRATOR, Subject("device", "bms"), False),
    (INTEGRATOR, Subject("resident", "bms"), False),
])
def test_a_party_speaks_only_as_itself(principal: Principal, subject: Subject, allowed: bool) -> None:
    """A device or resident acts as itself only; an integrator as no party."""
    assert may(principal, Act.SPEAK_AS, subject) is allowed


@pytest.mark.parametrize(("principal", "kind", "allowed"), [
    (DEVICE_1, "device", True), (DEVICE_1, "resident", False), (RESIDENT_2, "resident", True),
    (RESIDENT_2, "device", False), (INTEGRATOR, "device", False), (INTEGRATOR, "resident", False),
])
def test_an_unnamed_subject_is_the_endpoints_gate(principal: Principal, kind: policy.Kind, allowed: bool) -> None:
    """`Subject(kind)` asks for some party of the kind: a device may call the device endpoints, a resident not."""
    assert may(principal, Act.SPEAK_AS, Subject(kind)) is allowed


@pytest.mark.parametrize(("principal", "subject", "allowed"), [
    (RESIDENT_2, Subject("resident", "2"), True),
    (RESIDENT_2, Subject("resident", "3"), False),
    (RESIDENT_2, Subject("household", "101"), True),
    (RESIDENT_2, Subject("household", "102"), False),
    (RESIDENT_2, Subject("device", "1", "101"), True),  # a device of its household
    (RESIDENT_2, Subject("device", "7", "102"), False),
    (RESIDENT_2, SITE, False),
    (DEVICE_1, Subject("device", "1"), True),
    (DEVICE_1, Subject("device", "2"), False),
    (DEVICE_1, Subject("household", "101"), False),
    (DEVICE_1, Subject("resident", "2"), False),
    (DEVICE_1, SITE, False),
    (INTEGRATOR, Subject("device", "1", "101"), False),
    (INTEGRATOR, SITE, False),
])
def test_access_to_calls_settings_and_records(principal: Principal, subject: Subject, allowed: bool) -> None:
    """A resident reaches its own things, its household's and its household's devices; a device its own."""
    assert may(principal, Act.ACCESS, subject, home="101" if principal is RESIDENT_2 else None) is allowed


def test_a_residents_household_needs_its_home() -> None:
    """Without the resident's household looked up, nothing of a household is granted (fail closed)."""
    assert not may(RESIDENT_2, Act.ACCESS, Subject("household", "101"))
    assert not may(RESIDENT_2, Act.ACCESS, Subject("device", "1", "101"))


@pytest.mark.parametrize("principal", [DEVICE_1, RESIDENT_2, INTEGRATOR])
@pytest.mark.parametrize("subject", [SITE, Subject("household", "101")])
def test_only_the_admin_administers(principal: Principal, subject: Subject) -> None:
    """The directory, tokens, ops and a household's forwarding are the site manager's alone."""
    assert not may(principal, Act.ADMINISTER, subject, home="101")


def test_every_grant_is_in_the_table() -> None:
    """Beyond the admin and anonymous callers, a grant exists only where TABLE lists (role, act, kind)."""
    kinds: list[policy.Kind] = ["site", "device", "resident", "household"]
    for principal in (DEVICE_1, RESIDENT_2, INTEGRATOR):
        for act in Act:
            for kind in kinds:
                own = "101" if kind == "household" else principal.id  # its own of each kind, where it has one
                granted = may(principal, act, Subject(kind, own, "101"), home="101")
                assert granted is ((principal.role, act, kind) in policy.TABLE), (principal, act, kind)


def test_require_names_who_what_and_whom() -> None:
    """A refusal is the core's Forbidden (403) with a detail a reader can act on; a custom detail wins."""
    with pytest.raises(Forbidden, match="device 1 may not act as device 2") as refused:
        policy.require(DEVICE_1, Act.SPEAK_AS, Subject("device", "2"))
    assert refused.value.status == 403
    with pytest.raises(Forbidden, match="not on this topic"):
        policy.require(RESIDENT_2, Act.SPEAK_AS, Subject("resident", "3"), detail="not on this topic")
    policy.require(RESIDENT_2, Act.SPEAK_AS, Subject("resident", "2"))  # allowed: no exception


def test_a_call_party_is_a_subject() -> None:
    """Subject.of maps each call party's role to its subject kind."""
    assert Subject.of(Party(Role.DEVICE, "1")) == Subject("device", "1")
    assert Subject.of(Party(Role.RESIDENT, "2")) == Subject("resident", "2")
    assert Subject.of(Party(Role.HOUSEHOLD, "101")) == Subject("household", "101")


def test_a_party_publishes_on_its_own_input_topics() -> None:
    """The ACL default for a party's publishes: exactly its input topics of the grammar."""
    assert own_topics("device", "%u") == ["calls/request/%u", "devices/%u/calls/control", "devices/%u/status",
                                          "devices/%u/commands/ack"]
    assert own_topics("resident", "%u") == ["users/%u/calls/control", "users/%u/commands"]
    assert own_topics("integrator", "%u") == []
