"""MQTT adapter of the command table (`broker.core.commands`): a resident's `users/{id}/commands` and a
station's `devices/{id}/commands/ack`.

Called by `plugins/call_router.on_publish` once the topic's party is checked and the payload decoded.
Validation and domain errors raise, for the caller to refuse on the party's control topic. A command that
waits (an unlock waits for the station's ack) runs as a task and answers, or reports its error, when done.
Every reply echoes the `request_id`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Any

from pydantic import BaseModel

from broker.core import commands, topics
from broker.core.calls import now_ms
from broker.core.commands import Command, Reply
from broker.core.errors import DomainError, error_text
from broker.core.services import Services
from broker.core.states import Party
from broker.limiter import LogThrottle

__all__ = ["on_publish"]

log = logging.getLogger("intercom.mqtt")
_running: set[asyncio.Task[None]] = set()  # commands waiting (a task needs a strong reference)
_quiet = LogThrottle()  # client-driven lines: one per party and kind every 5 s


def on_publish(svc: Services, party: Party, last_level: str, body: Any) -> None:
    """`commands` (a resident's) or `ack` (a station's answer); errors raise, for the caller to refuse.
    Over `limits.mqtt_commands_per_principal` a command is answered 429 `rate_limited` and does nothing."""
    if not svc.command_rate.take(party.key):
        _rate_limited(svc, party, last_level, body)
        return
    if last_level == "ack":
        commands.ack(svc, party, body)
        return
    command, cmd = commands.parse(body)
    rid = commands.request_id(body)
    result = command.handler(svc, party, cmd)
    if inspect.isawaitable(result):
        task = asyncio.get_running_loop().create_task(_finish(svc, party, command, result, cmd, rid))
        _running.add(task)
        task.add_done_callback(_running.discard)
    else:
        _answer(svc, party, command, result, rid)


def _answer(svc: Services, party: Party, command: Command, reply: Reply, rid: str | None) -> None:
    if command.field is not None:
        svc.calls.publisher.publish(topics.resident_control(party.id),
                                    commands.reply_message(party, command, reply, rid, now_ms()), qos=1)


async def _finish(svc: Services, party: Party, command: Command, pending: Awaitable[Reply], cmd: BaseModel,
                  rid: str | None) -> None:
    name = getattr(cmd, "command", "")
    call_info: dict[str, Any] = {"call_id": getattr(cmd, "call_id", None), "action": name}
    try:
        reply = await pending
    except DomainError as exc:
        _quiet.log(log, logging.WARNING, f"{party.key}:{name}", "refused %s by %r: %s %r", name, party.key,
                   exc.status, exc.detail)
        svc.calls.send_error(party, exc.status, error_text(exc.status, exc.detail), call_info, rid, exc.reason)
        return
    except Exception:
        log.exception("%s by %s failed", name, party.key)
        svc.calls.send_error(party, 500, error_text(500, "internal error"), call_info, rid)
        return
    _answer(svc, party, command, reply, rid)


def _rate_limited(svc: Services, party: Party, last_level: str, body: Any) -> None:
    name = body.get("command") if isinstance(body, dict) and last_level != "ack" else None
    action = name if isinstance(name, str) and name in commands.COMMANDS else last_level
    rate = svc.settings.limits.mqtt_commands_per_principal
    _quiet.log(log, logging.WARNING, party.key, "refused MQTT %r from %r: over limits.mqtt_commands_per_principal "
               "(%g/s, burst %d)", action, party.key, rate.per_s, rate.burst)
    detail = (f"too many commands: at most {rate.per_s:g}/s (burst {rate.burst}) per party "
              "(limits.mqtt_commands_per_principal); this one was not carried out")
    svc.calls.send_error(party, 429, error_text(429, detail), {"action": action}, commands.request_id(body),
                         "rate_limited")
