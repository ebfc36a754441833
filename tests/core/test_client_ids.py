"""One client-id grammar: the login check, the anonymous connection's party and a body's named client agree."""

from __future__ import annotations

import pytest

from broker.core.clients import taker
from broker.core.errors import Forbidden
from broker.core.states import Party, Role
from broker.core.tokens import Principal
from plugins.auth import client_id_allowed
from plugins.call_router import identify

RESIDENT_2 = Party(Role.RESIDENT, "2")


def _taken(party: Party, named: str) -> bool:
    try:
        taker(party, None, named)
    except Forbidden:
        return False
    return True


@pytest.mark.parametrize(("client_id", "is_resident_2"), [
    ("resident-2", True),
    ("resident-2/phone", True),
    ("resident-2/a/b", True),
    ("resident_2", False),  # the TRTC user id, not a client id
    ("resident_2/phone", False),
    ("resident-2/", False),  # an empty suffix
    ("resident-22", False),
    ("device-2", False),
    ("Resident-2", False),
    ("resident", False),
    ("", False),
])
def test_every_path_reads_a_client_id_the_same_way(client_id: str, is_resident_2: bool) -> None:
    """Login (with suffixes), an anonymous connection's party and a REST body's client_id agree on each id."""
    assert client_id_allowed(Principal("resident", "2"), client_id, suffixes=True) is is_resident_2
    assert (identify(None, client_id) == RESIDENT_2) is is_resident_2
    assert _taken(RESIDENT_2, client_id) is is_resident_2


def test_suffixes_can_be_turned_off_for_logins() -> None:
    """With `auth.client_id_suffixes: false` only the bare `{role}-{id}` logs in."""
    assert client_id_allowed(Principal("device", "1"), "device-1", suffixes=False)
    assert not client_id_allowed(Principal("device", "1"), "device-1/x", suffixes=False)


@pytest.mark.parametrize(("principal", "client_id", "allowed"), [
    (Principal("admin", "admin"), "admin", True),
    (Principal("admin", "admin"), "admin/console-1f2e", True),
    (Principal("admin", "admin"), "admin-admin", False),
    (Principal("integrator", "bms"), "integrator-bms/worker-1", True),
    (Principal("integrator", "bms"), "bms", False),
    (Principal("device", "a-b"), "device-a-b", True),  # an id may hold `-`: the role is the first word
])
def test_admin_integrator_and_dashed_ids(principal: Principal, client_id: str, allowed: bool) -> None:
    """The admin's `admin`, an integrator's `integrator-{name}` and ids holding `-` follow the same grammar."""
    assert client_id_allowed(principal, client_id, suffixes=True) is allowed


def test_an_anonymous_connection_names_only_devices_and_residents() -> None:
    """A local-only client id names a call party only as a device or a resident."""
    assert identify(None, "device-7/lobby") == Party(Role.DEVICE, "7")
    assert identify(None, "integrator-bms") is None
    assert identify(None, "admin") is None
