"""MQTT adapter of a resident's `users/{id}/commands` (`unlock`, `dnd`, `calls_seen`) and a station's
`devices/{id}/commands/ack`.

Called by `plugins/call_router.on_publish` once the topic's party is checked and the payload decoded. An
unlock waits for the station's ack, so it runs as a task; its outcome goes back on the resident's control
topic (a `door_opened` control message, or an error). A `dnd` command sets the resident's own
do-not-disturb at once and is answered with a `dnd` control message. Each reply echoes the `request_id`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from broker.core.calls import now_ms
from broker.core.doors import Opener
from broker.core.errors import DomainError, error_text
from broker.core.payloads import CommandAck, ControlMessage, DndCommand, DoorCommandRequest, SeenCommand, topics
from broker.core.services import Services
from broker.core.states import Party
from broker.limiter import LogThrottle

__all__ = ["on_publish", "request_id"]

log = logging.getLogger("intercom.mqtt")
_quiet = LogThrottle()  # refused unlocks are client-driven
_running: set[asyncio.Task[None]] = set()  # unlocks waiting for their ack (a task needs a strong reference)


def request_id(body: Any) -> str | None:
    """The command's `request_id` to echo, if well-formed (a bad one must not break the error reply)."""
    rid = body.get("request_id") if isinstance(body, dict) else None
    return rid if isinstance(rid, str) and len(rid) <= 64 else None


def on_publish(svc: Services, party: Party, last_level: str, body: Any) -> None:
    """`commands` (a resident's unlock) or `ack` (a station's answer); errors raise, for the caller to refuse."""
    if last_level == "ack":
        svc.doors.ack(party.id, CommandAck.model_validate(body))
    else:
        _command(svc, party, body)


def _command(svc: Services, party: Party, body: Any) -> None:
    """Validate now (a ValidationError is the caller's 400), then unlock in the background, or set DND."""
    command = body.get("command") if isinstance(body, dict) else None
    if command == "dnd":
        _set_dnd(svc, party, DndCommand.model_validate(body))
        return
    if command == "calls_seen":  # the answer is the retained users/{id}/calls/missed dropping to 0
        SeenCommand.model_validate(body)
        svc.calls.resident_calls.mark_seen(party.id)
        return
    cmd = DoorCommandRequest.model_validate(body)
    task = asyncio.get_running_loop().create_task(_unlock(svc, party, cmd))
    _running.add(task)
    task.add_done_callback(_running.discard)


def _set_dnd(svc: Services, party: Party, cmd: DndCommand) -> None:
    view = svc.calls.dnd.set("resident", party.id, cmd.enabled, cmd.windows())
    msg = ControlMessage(call_info={"action": "dnd", "timestamp": now_ms()}, resident_id=party.id,
                         request_id=cmd.request_id, dnd=view)
    svc.calls.publisher.publish(topics.resident_control(party.id), msg.model_dump_json(exclude_none=True).encode(),
                                qos=1)


async def _unlock(svc: Services, party: Party, cmd: DoorCommandRequest) -> None:
    call_info: dict[str, Any] = {"call_id": cmd.call_id, "action": "unlock"}
    try:
        result = await svc.doors.unlock(Opener(party.id), cmd.device_id, cmd.call_id, cmd.relay)
    except DomainError as exc:
        _quiet.log(log, logging.WARNING, f"unlock {party.key}", "refused unlock of device %r by %r: %s %r",
                   cmd.device_id, party.key, exc.status, exc.detail)
        svc.calls.send_error(party, exc.status, error_text(exc.status, exc.detail), call_info, cmd.request_id,
                             exc.reason)
        return
    except Exception:
        log.exception("unlock of device %s by %s failed", cmd.device_id, party.key)
        svc.calls.send_error(party, 500, error_text(500, "internal error"), call_info, cmd.request_id)
        return
    door = {k: result[k] for k in ("device_id", "relay", "command_id", "event_id", "call_ended")}
    msg = ControlMessage(call_info={"call_id": result["call_id"], "action": "door_opened", "timestamp": now_ms()},
                         resident_id=party.id, request_id=cmd.request_id, door=door)
    svc.calls.publisher.publish(topics.resident_control(party.id), msg.model_dump_json(exclude_none=True).encode(),
                                qos=1)
