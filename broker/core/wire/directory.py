"""The site directory's bodies (households, residents, devices) and the settings kept per resident and
household: do-not-disturb and call forwarding."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, StrictBool, model_validator

from broker.core.ids import Id
from broker.core.wire.base import In

__all__ = ["DeviceIn", "DirectoryPatch", "DndIn", "DndWindow", "ForwardingIn", "HouseholdIn", "ResidentIn"]


class HouseholdIn(In):
    household_number: Id
    name: Annotated[str, Field(max_length=128)] | None = None


class ResidentIn(In):
    resident_id: Id
    household_number: Id
    name: Annotated[str, Field(max_length=128)] | None = None


class DeviceIn(In):
    device_id: Id
    household_number: Id
    name: Annotated[str, Field(max_length=128)] | None = None
    kind: Literal["door", "lobby"] | None = None  # not set: calls any household of the site (the seed's rule)
    households: list[Id] | None = None  # a lobby panel's households (null: any of the site)
    emergency: StrictBool = False  # rings residents in do-not-disturb too


def _hhmm(v: str) -> str:
    hours, _, minutes = v.partition(":")
    if not (len(hours) == len(minutes) == 2 and hours.isdigit() and minutes.isdigit()
            and int(hours) < 24 and int(minutes) < 60):
        raise ValueError(f"must be a time of day 'HH:MM' from 00:00 to 23:59, got {v!r}")
    return v


HourMinute = Annotated[str, AfterValidator(_hhmm)]


class DndWindow(In):
    """A daily do-not-disturb window in the site's time zone; `to` before `from` runs past midnight."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    start: HourMinute = Field(alias="from")
    end: HourMinute = Field(alias="to")

    @model_validator(mode="after")
    def _not_empty(self) -> DndWindow:
        if self.start == self.end:
            raise ValueError("'from' and 'to' are the same time: for all day, leave out the schedule")
        return self


class DndIn(In):
    """`PUT /api/residents/{id}/dnd` and `PUT /api/households/{n}/dnd`."""

    enabled: StrictBool
    schedule: Annotated[list[DndWindow], Field(max_length=24)] | None = None

    def windows(self) -> list[tuple[str, str]] | None:
        """The schedule as (from, to) pairs, as `broker.core.dnd` keeps it."""
        return [(w.start, w.end) for w in self.schedule] if self.schedule is not None else None


class ForwardingIn(In):
    """`PUT /api/households/{n}/forwarding`: `forward_to` null = use the site's."""

    forward_to: Annotated[list[Id], Field(max_length=16)] | None
    forward_after_s: Annotated[float, Field(gt=0, le=3600)] | None = None


class DirectoryPatch(In):
    """`PATCH /api/admin/{kind}/{id}`: rename an entry, move a resident or device to another household, or
    (devices) make it a unit door station or a lobby panel, or an emergency device. A field left out keeps
    its value."""

    name: Annotated[str, Field(max_length=128)] | None = None
    household_number: Id | None = None
    kind: Literal["door", "lobby"] | None = None  # devices only
    households: list[Id] | None = None  # devices only: the households a lobby panel may call (none: all)
    emergency: StrictBool | None = None  # devices only: rings residents in do-not-disturb too
