"""Unit door stations and lobby panels: which households a device may call, and whose residents may open it.

A device whose kind is not set (the default) follows the seed: it may call any household of the site
(`household_number`, `target_resident_id`), and opens, without a call, for its own household only. An
installer restricts it: a `door` station is a unit's own, it calls its household only; a `lobby` panel (a
building entrance or a gate, like 2N's and Akuvox's lobby and guard units) calls any household of the site,
or only those in its `households` list. Pure: rows in, a decision or a `Forbidden` out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from broker.core.errors import BadRequest, Forbidden

__all__ = ["KINDS", "check_call_scope", "check_scope", "in_scope", "kind_of", "may_call"]

KINDS = ("door", "lobby")


def kind_of(device: Mapping[str, Any]) -> str | None:
    """`door`, `lobby`, or None: not set."""
    kind = device.get("kind")
    return str(kind) if kind else None


def check_scope(kind: str | None, households: Sequence[str] | None) -> None:
    """A kind and households list that go together (BadRequest otherwise)."""
    if kind is not None and kind not in KINDS:
        raise BadRequest(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    if households is not None and kind != "lobby":
        raise BadRequest("households: only a lobby panel (kind 'lobby') has a households list")


def in_scope(device: Mapping[str, Any], household_number: str) -> bool:
    """May residents of `household_number` open this device without a call? Its own household, or a lobby
    panel's households (a device whose kind is not set: its own household, as a door station)."""
    if kind_of(device) != "lobby":
        return bool(device["household_number"] == household_number)
    households = device.get("households")
    return households is None or household_number in households


def may_call(device: Mapping[str, Any], household_number: str) -> bool:
    """May this device call `household_number`? Any household when its kind is not set (the seed's rule)."""
    return kind_of(device) is None or in_scope(device, household_number)


def check_call_scope(device: Mapping[str, Any], household_number: str) -> None:
    """403 `out_of_scope` for a call outside what the device may ring."""
    if may_call(device, household_number):
        return
    if kind_of(device) == "door":
        raise Forbidden(f"door station '{device['device_id']}' calls only its own household "
                        f"'{device['household_number']}', not '{household_number}'", "out_of_scope")
    raise Forbidden(f"lobby panel '{device['device_id']}' may not call household '{household_number}' "
                    "(not in its households list)", "out_of_scope")
