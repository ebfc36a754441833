"""The seed's topic grammar: every topic builder and the one parser; the only place topic strings are spelled.

Each builder takes an id, a `+` (a filter for every party) or an ACL pattern such as `%u`. `parse` reads a
topic back to its `Kind` and the party (or message type) it names; the call service and the ACL both read
topics through it, so the grammar is written once.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from typing import NamedTuple

__all__ = ["CALL_SERVICE_FILTERS", "INPUTS", "REQUEST_PREFIX", "Kind", "Parsed", "classify", "device_all",
           "device_commands", "device_commands_ack", "device_control", "device_status", "incoming", "missed",
           "parse", "request", "resident_all", "resident_commands", "resident_control", "system"]

REQUEST_PREFIX = "calls/request/"


class Kind(StrEnum):
    """A topic's meaning; each value is the name of its builder."""

    REQUEST = "request"  # a device starts a call
    INCOMING = "incoming"  # the server rings a resident
    DEVICE_CONTROL = "device_control"
    RESIDENT_CONTROL = "resident_control"
    MISSED = "missed"  # a resident's retained missed-call counter
    DEVICE_STATUS = "device_status"
    DEVICE_COMMANDS = "device_commands"  # the server's commands to a station (door unlock)
    DEVICE_COMMANDS_ACK = "device_commands_ack"  # a station's answer to a command
    RESIDENT_COMMANDS = "resident_commands"  # a resident's commands (unlock, dnd, calls_seen, call_status)
    SYSTEM = "system"  # the seed's system messages, by type


RESIDENT_KINDS = frozenset({Kind.INCOMING, Kind.RESIDENT_CONTROL, Kind.MISSED, Kind.RESIDENT_COMMANDS})
# What clients publish the call service's input on.
INPUTS = frozenset({Kind.REQUEST, Kind.DEVICE_CONTROL, Kind.RESIDENT_CONTROL, Kind.DEVICE_STATUS,
                    Kind.RESIDENT_COMMANDS, Kind.DEVICE_COMMANDS_ACK})


class Parsed(NamedTuple):
    """A parsed topic: its kind and the id in it (a device's, a resident's, or a system message's type)."""

    kind: Kind
    id: str

    @property
    def role(self) -> str | None:
        """`device` or `resident`: whose topic it is (None: a system topic, nobody's)."""
        if self.kind is Kind.SYSTEM:
            return None
        return "resident" if self.kind in RESIDENT_KINDS else "device"


def request(device_id: str) -> str:
    return f"{REQUEST_PREFIX}{device_id}"


def incoming(resident_id: str) -> str:
    return f"users/{resident_id}/calls/incoming"


def device_control(device_id: str) -> str:
    return f"devices/{device_id}/calls/control"


def resident_control(resident_id: str) -> str:
    return f"users/{resident_id}/calls/control"


def missed(resident_id: str) -> str:
    return f"users/{resident_id}/calls/missed"


def device_status(device_id: str) -> str:
    return f"devices/{device_id}/status"


def device_commands(device_id: str) -> str:
    return f"devices/{device_id}/commands"


def device_commands_ack(device_id: str) -> str:
    return f"devices/{device_id}/commands/ack"


def resident_commands(resident_id: str) -> str:
    return f"users/{resident_id}/commands"


def system(message_type: str) -> str:
    return f"system/{message_type}"


def device_all(device_id: str) -> str:
    """A filter: every topic of the device's."""
    return f"devices/{device_id}/#"


def resident_all(resident_id: str) -> str:
    """A filter: every topic of the resident's."""
    return f"users/{resident_id}/#"


def parse(topic: str) -> Parsed | None:
    """The kind and id of a topic of the seed's grammar, else None (a filter such as `device_all` is not a topic)."""
    match topic.split("/"):
        case ["calls", "request", device_id]:
            return Parsed(Kind.REQUEST, device_id)
        case ["users", resident_id, "calls", "incoming"]:
            return Parsed(Kind.INCOMING, resident_id)
        case ["devices", device_id, "calls", "control"]:
            return Parsed(Kind.DEVICE_CONTROL, device_id)
        case ["users", resident_id, "calls", "control"]:
            return Parsed(Kind.RESIDENT_CONTROL, resident_id)
        case ["users", resident_id, "calls", "missed"]:
            return Parsed(Kind.MISSED, resident_id)
        case ["devices", device_id, "status"]:
            return Parsed(Kind.DEVICE_STATUS, device_id)
        case ["devices", device_id, "commands"]:
            return Parsed(Kind.DEVICE_COMMANDS, device_id)
        case ["devices", device_id, "commands", "ack"]:
            return Parsed(Kind.DEVICE_COMMANDS_ACK, device_id)
        case ["users", resident_id, "commands"]:
            return Parsed(Kind.RESIDENT_COMMANDS, resident_id)
        case ["system", message_type]:
            return Parsed(Kind.SYSTEM, message_type)
    return None


@lru_cache(maxsize=4096)  # asked for every client PUBLISH; a topic's answer never changes
def classify(topic: str) -> Parsed | None:
    """The kind and party of a topic clients publish the call service's input on (`INPUTS`), else None."""
    parsed = parse(topic)
    return parsed if parsed is not None and parsed.kind in INPUTS else None


# What the call service subscribes to when it is a client of an external broker (bridge mode).
CALL_SERVICE_FILTERS = tuple(builder("+") for builder in (request, device_control, resident_control, device_status,
                                                          resident_commands, device_commands_ack))
