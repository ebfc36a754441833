"""TRTC ids the box issues: kept when TRTC takes them, else mapped deterministically into TRTC's rules."""

from __future__ import annotations

import pytest

from broker.core.errors import BadRequest
from broker.core.trtc import ROOM_ID, USER_ID, party_user_id, trtc_room_id, trtc_user_id

# every id shape docs/protocol.md "Ids" allows: CJK, hyphens, spaces, dots, up to 64 characters
SHAPES = ["1", "2", "东区-101", "门口", "a-b", "with space", "1.5", "x" * 23, "x" * 24, "y" * 64, "門" * 64,
          "emoji-😀", "a!b", "%u", "A_b-C"]


@pytest.mark.parametrize("ident", SHAPES)
@pytest.mark.parametrize("role", ["device", "resident"])
def test_every_party_id_becomes_a_trtc_user_id(role: str, ident: str) -> None:
    """The userId fits TRTC's rules (<= 32 bytes of [a-zA-Z0-9_-]) and is the same every time."""
    user = party_user_id(role, ident)
    assert USER_ID.fullmatch(user), user
    assert len(user.encode()) <= 32, user
    assert party_user_id(role, ident) == user
    natural = f"{role}_{ident}"
    assert user == natural if USER_ID.fullmatch(natural) else user.startswith(f"{role}-")


def test_ids_that_fit_are_kept() -> None:
    """`device_1` and `resident_2` (and any id TRTC takes, e.g. the seed's `user123`) stay as they are."""
    assert (party_user_id("device", "1"), party_user_id("resident", "2")) == ("device_1", "resident_2")
    assert trtc_user_id("user123") == "user123"


def test_mapped_ids_do_not_collide() -> None:
    """Distinct parties get distinct TRTC ids, kept or mapped, across both roles and many shapes."""
    names = [(role, f"{stem}{i}") for role in ("device", "resident") for i in range(500)
             for stem in ("门", "x" * 30, "a b", "")]
    users = {party_user_id(role, ident) for role, ident in names}
    assert len(users) == len(set(names))


def test_room_ids() -> None:
    """A call id and the seed's `room123` are room ids; a room TRTC refuses is a 400 naming the field."""
    assert trtc_room_id("call-20250510-abcdef123456") == "call-20250510-abcdef123456"
    assert trtc_room_id("room123") == "room123"
    for bad in ("房间123", "a/b", "r" * 65, "tab\there"):
        with pytest.raises(BadRequest, match="channel_id"):
            trtc_room_id(bad)
    assert ROOM_ID.fullmatch(" !#$%&()+-:;<=.>?@[]^_{}|~,")
