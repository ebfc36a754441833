"""Unit door stations and lobby panels: which households a device may call, and whose residents may open it.

A `door` station (the default) is a unit's own: it calls its household only. A `lobby` panel (a building
entrance or a gate, like 2N's and Akuvox's lobby and guard units) calls any household of the site, or only
those in its `households` list. Pure: rows in, a decision or a `Forbidden` out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from broker.core.errors import BadRequest, Forbidden

__all__ = ["KINDS", "check_call_scope", "check_scope", "in_scope", "kind_of"]

KINDS = ("door", "lobby")


def kind_of(device: Mapping[str, Any]) -> str:
    return str(device.get("kind") or "door")


def check_scope(kind: str, households: Sequence[str] | None) -> None:
    """A kind and households list that go together (BadRequest otherwise)."""
    if kind not in KINDS:
        raise BadRequest(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    if households is not None and kind != "lobby":
        raise BadRequest("households: only a lobby panel (kind 'lobby') has a households list")


def in_scope(device: Mapping[str, Any], household_number: str) -> bool:
    """May this device call (and so be opened for) `household_number`?"""
    if kind_of(device) == "door":
        return bool(device["household_number"] == household_number)
    households = device.get("households")
    return households is None or household_number in households


def check_call_scope(device: Mapping[str, Any], household_number: str) -> None:
    """403 `out_of_scope` for a call outside what the device may ring."""
    if in_scope(device, household_number):
        return
    if kind_of(device) == "door":
        raise Forbidden(f"door station '{device['device_id']}' calls only its own household "
                        f"'{device['household_number']}', not '{household_number}'", "out_of_scope")
    raise Forbidden(f"lobby panel '{device['device_id']}' may not call household '{household_number}' "
                    "(not in its households list)", "out_of_scope")
