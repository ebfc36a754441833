"""Turns a client's PUBLISH on a call topic into a service call; errors go back on its control topic.

Transport-agnostic: the embedded broker's plugin and the external-broker bridge both feed it.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from broker.core import commands, fastjson, policy, topics, wirejson
from broker.core.clients import parse_client_id, taker
from broker.core.errors import BadRequest, DomainError, Forbidden, error_text
from broker.core.fields import DEVICE_KEYS, RESIDENT_KEYS, one_id
from broker.core.group_commit import Meta
from broker.core.ids import validation_detail
from broker.core.policy import Act, Subject
from broker.core.services import Services
from broker.core.states import Party, Role
from broker.core.tokens import Principal
from broker.core.wire.calls import ControlBody, MqttCallRequest
from broker.core.wire.status import DeviceStatus
from broker.limiter import LogThrottle
from plugins import command_router

__all__ = ["identify", "on_publish"]

log = logging.getLogger("intercom.mqtt")
_quiet = LogThrottle()  # refusals are client-driven: one line per party and topic every 5 s


def identify(principal: Principal | None, client_id: str | None) -> Party | None:
    """Which party a connection speaks for: its authenticated principal, else its client id."""
    if principal is not None:
        return principal.party()
    named = parse_client_id(client_id) if client_id else None
    if named is not None and named.id is not None and named.role in (Role.DEVICE, Role.RESIDENT):
        return Party(Role(named.role), named.id)
    return None


def reply_route(party: Party, reply_to: tuple[str, bytes | None] | None) -> tuple[str, bytes | None] | None:
    """Where the answer to an MQTT 5 request goes: its Response Topic when that is one of the party's own
    topics (`devices/{id}/...`, which only it may subscribe to), else None (its control topic, as in 3.1.1):
    a request must not make the server publish somewhere the requester could not publish itself."""
    if reply_to is None:
        return None
    own = topics.device_all(party.id)[:-1] if party.role is Role.DEVICE else topics.resident_all(party.id)[:-1]
    if reply_to[0].startswith(own) and len(reply_to[0]) > len(own):
        return reply_to
    _quiet.log(log, logging.WARNING, f"reply {party.key}",
               "%r asked for a reply on %r, not one of its own topics: replying on its control topic",
               party.key, reply_to[0])
    return None


def on_publish(svc: Services, principal: Principal | None, topic: str, payload: bytes,
               client_id: str | None = None, reply_to: tuple[str, bytes | None] | None = None) -> bool:
    """Handle one client publish; never raises; True when it was the call service's input (handled or
    refused). `client_id`: the publishing connection's (None in bridge mode, where the payload may name it).
    `reply_to`: an MQTT 5 request's (Response Topic, Correlation Data), where a `calls/request` is answered
    instead of the device's control topic."""
    kind_and_id = topics.classify(topic)
    if kind_and_id is None or kind_and_id.role is None:
        return False
    kind, party_id = kind_and_id
    party = Party(Role(kind_and_id.role), party_id)
    reply = reply_route(party, reply_to) if kind == "request" else None
    body: Any = None
    request_id: str | None = None
    try:
        body = _decode(svc, payload)
        if isinstance(body, dict) and body.get("origin") == "server":
            if client_id is None:
                return False  # bridge mode: our own message, echoed back by the external broker
            raise BadRequest("origin: only the server's messages carry origin 'server'")
        policy.require(principal, Act.SPEAK_AS, Subject.of(party),
                       detail=f"{principal.role} {principal.id} may not publish on {topic}" if principal else None)
        named = one_id(body, DEVICE_KEYS if party.role is Role.DEVICE else RESIDENT_KEYS)
        if named is not None and named != party.id:
            raise Forbidden(f"{topic} is {party.role} {party.id}'s; its payload names {party.role} {named}")
        with svc.calls.reporting_failure(
                lambda: _refuse(svc, party, topic, 500, "internal error", None, body, request_id, reply)):
            if kind == "request":
                request_id = commands.request_id(body)
                req = MqttCallRequest.model_validate(body)
                data = svc.calls.start_call(party.id, req.household_number, timestamp=req.timestamp)
                # published by the group commit, i.e. after the call is stored
                answer = fastjson.dumps({"origin": "server", **data, "request_id": req.request_id}).encode()
                if reply is None:
                    svc.calls.publisher.publish(topics.device_control(party.id), answer, qos=1)
                else:
                    svc.calls.publisher.publish(reply[0], answer, qos=1, meta=Meta(correlation=reply[1]))
            elif kind in ("resident_commands", "device_commands_ack"):  # the command table: plugins/command_router.py
                request_id = commands.request_id(body)
                command_router.on_publish(svc, party, "commands" if kind == "resident_commands" else "ack", body)
            elif kind == "device_status":
                # Published retained by the server too (after the device's own message, which the broker
                # retained first), so the retained message is always the stored, merged status.
                svc.status.update(DeviceStatus.model_validate({**_as_dict(body), "device_id": party.id}))
            else:
                ctl = ControlBody.model_validate(body)
                svc.calls.act(party, ctl.call_info, taker(party, client_id, ctl.client_id))
    except ValidationError as exc:
        _refuse(svc, party, topic, 400, validation_detail(exc), None, body, request_id, reply)
    except DomainError as exc:
        _refuse(svc, party, topic, exc.status, exc.detail, exc.reason, body, request_id, reply)
    except Exception:
        log.exception("unexpected error handling publish on %s", topic)
        _refuse(svc, party, topic, 500, "internal error", None, body, request_id, reply)
    return True


def _decode(svc: Services, payload: bytes) -> Any:
    if len(payload) > svc.settings.mqtt.max_payload_bytes:
        raise BadRequest(f"payload too large: {len(payload)} bytes > {svc.settings.mqtt.max_payload_bytes}")
    return wirejson.loads(payload, "payload")


def _as_dict(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("payload: must be a JSON object")
    return body


def _refuse(svc: Services, party: Party, topic: str, code: int, detail: str, reason: str | None, body: Any,
            request_id: str | None, reply: tuple[str, bytes | None] | None = None) -> None:
    message = error_text(code, detail)
    _quiet.log(log, logging.WARNING, f"refused {party.key} {topic}", "refused publish on %r from %r: %s %r",
               topic, party.key, code, message)
    if topic.endswith("/status"):
        _restore_retained(svc, party)
    info = body.get("call_info") if isinstance(body, dict) else None
    call_info = {k: info.get(k) for k in ("call_id", "action") if k in info} if isinstance(info, dict) else {}
    svc.calls.send_error(party, code, message, call_info, request_id, reason, reply)


def _restore_retained(svc: Services, party: Party) -> None:
    """A refused status publish the broker already retained must not outlive the refusal."""
    try:
        svc.status.restore_retained(party.id)
    except Exception:
        log.exception("could not restore the retained status of %s", party.key)
