"""Who may do what: one table and one function, used by the REST views, the MQTT routers and the ACL defaults.

`may(principal, act, subject)` answers; `require(...)` raises the core's `Forbidden` with a detail naming who,
what and whom. The principal `None` is an anonymous caller, which exists only in local-only mode (loopback
listeners, `auth.allow_anonymous_on_loopback`): like the admin, it may do anything. Everyone else gets only
what `TABLE` grants:

| principal  | SPEAK_AS (act as the party)   | ACCESS (its calls, settings, records)        | ADMINISTER |
|------------|-------------------------------|----------------------------------------------|------------|
| admin      | any party (console simulator) | anything                                     | yes        |
| anonymous  | any party                     | anything                                     | yes        |
| device     | itself                        | itself                                       | no         |
| resident   | itself                        | itself, its household, its household's devices | no       |
| integrator | nobody (its MQTT topics come from `acl.integrators`) | nothing               | no         |

A subject with no id (`Subject("device")`) asks "some party of this kind": the gate of an endpoint before
the body names one (a device may call `/api/mqtt/call`, a resident may not).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from broker.core import topics
from broker.core.errors import Forbidden
from broker.core.states import Party, Role
from broker.core.tokens import Principal

__all__ = ["SITE", "TABLE", "Act", "Subject", "may", "own_topics", "require"]


class Act(StrEnum):
    SPEAK_AS = "act as"  # publish on its input topics, start or act on a call as it, report its status, open a door
    ACCESS = "access"  # read or change its calls, settings and records (history, DND, forwarding view, status)
    ADMINISTER = "administer"  # the site manager's: directory, tokens, ops, audit, system messages, forwarding


Kind = Literal["site", "device", "resident", "household"]


@dataclass(frozen=True, slots=True)
class Subject:
    """What is acted on: a party or a household by id (None: any of its kind), or the site as a whole."""

    kind: Kind
    id: str | None = None
    household: str | None = None  # a device's household: its residents may ACCESS it

    @classmethod
    def of(cls, party: Party) -> Subject:
        """A call party as a subject (a device, a resident, or a household acting unnamed)."""
        kind: Kind = "device" if party.role is Role.DEVICE else "resident" if party.role is Role.RESIDENT else (
            "household")
        return cls(kind, party.id)

    def __str__(self) -> str:
        if self.kind == "site":
            return "the site"
        return f"{self.kind} {self.id}" if self.id is not None else f"a {self.kind}"


SITE = Subject("site")

# (principal role, act, subject kind) -> whose: `self` (the principal's own id), `home` (its household:
# the household itself, or a device of it). Anything not listed is refused.
Whose = Literal["self", "home"]
TABLE: dict[tuple[str, Act, Kind], Whose] = {
    ("device", Act.SPEAK_AS, "device"): "self",
    ("resident", Act.SPEAK_AS, "resident"): "self",
    ("device", Act.ACCESS, "device"): "self",
    ("resident", Act.ACCESS, "resident"): "self",
    ("resident", Act.ACCESS, "household"): "home",
    ("resident", Act.ACCESS, "device"): "home",
}


def may(principal: Principal | None, act: Act, subject: Subject, home: str | None = None) -> bool:
    """May `principal` (None: anonymous, local-only) do `act` to `subject`? `home`: a resident principal's
    household, needed only where a household or a device is the subject (the caller looks it up)."""
    if principal is None or principal.role == "admin":
        return True
    whose = TABLE.get((principal.role, act, subject.kind))
    if whose is None:
        return False
    if subject.id is None:
        return True  # a gate: some party of this kind, named later
    if whose == "self":
        return subject.id == principal.id
    target = subject.id if subject.kind == "household" else subject.household
    return home is not None and target == home


def require(principal: Principal | None, act: Act, subject: Subject, home: str | None = None,
            detail: str | None = None) -> None:
    """`may`, or `Forbidden` (403) with `detail`, by default one naming who, what and whom."""
    if not may(principal, act, subject, home):
        who = f"{principal.role} {principal.id}" if principal is not None and principal.id else (
            f"a {principal.role}" if principal is not None else "an anonymous caller")
        raise Forbidden(detail or f"{who} may not {act} {subject}")


def own_topics(role: str, ident: str) -> list[str]:
    """The topics a party publishes on as itself (SPEAK_AS): its input topics of the grammar, in builder order."""
    return [getattr(topics, kind.value)(ident) for kind in topics.Kind
            if kind in topics.INPUTS and topics.Parsed(kind, ident).role == role]
