"""Resident commands as one table: `{name: Command(model, handler, reply)}`, and the station's ack.

A command published on `users/{id}/commands` is looked up by its `command` field, validated by its model and
run by its handler for the topic's resident; the REST twin of a command calls the same handler. Adding a
command is one model (`broker.core.wire.commands`), one handler here and one row in `COMMANDS`.

A handler returns a `Reply` (the data its REST twin answers with; over MQTT the control message
`{"call_info":{"action":…}, "resident_id", "request_id", <reply.field>: data}`), or an awaitable of one when
it waits on something (an unlock waits for the station's ack). Domain errors raise, for the adapter to answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from broker.core.doors import Opener
from broker.core.errors import BadRequest
from broker.core.fastjson import compact
from broker.core.services import Services
from broker.core.states import Party
from broker.core.wire.call_views import CallStatusView
from broker.core.wire.commands import CallStatusCommand, CommandAck, DndCommand, DoorCommandRequest, SeenCommand
from broker.core.wire.directory import DndIn

__all__ = ["COMMANDS", "Command", "Reply", "ack", "parse", "reply_message", "request_id"]


@dataclass(frozen=True, slots=True)
class Reply:
    """What a command answers: `action` names it on the control topic, `data` is its result."""

    action: str
    data: Any
    call_id: str | None = None


Result = Reply | Awaitable[Reply]


@dataclass(frozen=True, slots=True)
class Command:
    model: type[BaseModel]
    handler: Callable[[Services, Party, Any], Result]
    field: str | None  # where the MQTT reply carries `data`; None: no MQTT reply (the command's effect answers)


def unlock(svc: Services, party: Party, cmd: DoorCommandRequest) -> Awaitable[Reply]:
    """Open a door for the resident; answers once the station acked (`door_opened`)."""

    async def run() -> Reply:
        result = await svc.doors.unlock(Opener(party.id), cmd.device_id, cmd.call_id, cmd.relay)
        door = {k: result[k] for k in ("device_id", "relay", "command_id", "event_id", "call_ended")}
        return Reply("door_opened", door, result["call_id"])

    return run()


def set_dnd(svc: Services, party: Party, cmd: DndIn) -> Reply:
    """The resident's own do-not-disturb."""
    return Reply("dnd", svc.calls.dnd.set("resident", party.id, cmd.enabled, cmd.windows()))


def calls_seen(svc: Services, party: Party, _cmd: SeenCommand | None) -> Reply:
    """Every missed call seen; over MQTT the retained `users/{id}/calls/missed` dropping to 0 is the answer."""
    return Reply("calls_seen", svc.calls.resident_calls.mark_seen(party.id))


def call_status(svc: Services, party: Party, _cmd: CallStatusCommand | None) -> Reply:
    """The resident's ringing and connected calls (each as `GET /api/calls/{id}/session` shows it to it)."""
    status: CallStatusView = {"resident_id": party.id, "calls": svc.calls.active_for(party)}
    return Reply("call_status", status)


COMMANDS: dict[str, Command] = {
    "unlock": Command(DoorCommandRequest, unlock, "door"),
    "dnd": Command(DndCommand, set_dnd, "dnd"),
    "calls_seen": Command(SeenCommand, calls_seen, None),
    "call_status": Command(CallStatusCommand, call_status, "call_status"),
}


def parse(body: Any) -> tuple[Command, BaseModel]:
    """The command a body names and its validated model (BadRequest `unknown_command` naming the known ones)."""
    name = body.get("command") if isinstance(body, dict) else None
    command = COMMANDS.get(name) if isinstance(name, str) else None
    if command is None:
        known = ", ".join(sorted(COMMANDS))
        shown = f"{name!r}" if isinstance(name, str) else "missing"
        raise BadRequest(f"command: unknown command {shown[:80]} (known: {known})", "unknown_command")
    return command, command.model.model_validate(body)


def ack(svc: Services, party: Party, body: Any) -> None:
    """A station's answer on `devices/{id}/commands/ack`."""
    svc.doors.ack(party.id, CommandAck.model_validate(body))


def request_id(body: Any) -> str | None:
    """The `request_id` to echo, if well-formed (a bad one must not break the error reply)."""
    rid = body.get("request_id") if isinstance(body, dict) else None
    return rid if isinstance(rid, str) and len(rid) <= 64 else None


def reply_message(party: Party, command: Command, reply: Reply, rid: str | None, timestamp: int) -> bytes:
    """The control message answering a command (server clock `timestamp`, epoch ms)."""
    call_info: dict[str, Any] = {"action": reply.action, "timestamp": timestamp}
    if reply.call_id is not None:
        call_info = {"call_id": reply.call_id, **call_info}
    msg: dict[str, Any] = {"origin": "server", "call_info": call_info, "resident_id": party.id}
    if rid is not None:
        msg["request_id"] = rid
    if command.field is not None:
        msg[command.field] = reply.data
    return compact(msg).encode()
