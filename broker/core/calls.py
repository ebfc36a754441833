"""The call service: runs the state machine, persists each transition, then notifies.

Synchronous on purpose: a transition (validate, write, update memory) runs without yielding to the
loop, so two actions on one call can never interleave. Writes are staged in a group transaction and
committed once per loop tick; the messages a transition produces go out only after that commit
(broker/core/group_commit.py). REST callers `await durable()` before answering.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from broker.config import CallsConfig, SiteConfig
from broker.core import states, topics
from broker.core.admission import CallAdmission, LoopLag
from broker.core.call_log import Outcome, outcomes
from broker.core.device_kinds import check_call_scope
from broker.core.directory import Directory
from broker.core.dnd import DoNotDisturb
from broker.core.errors import BadRequest, Busy, Conflict, Forbidden, NotFound
from broker.core.forwarding import Forwarding
from broker.core.group_commit import GroupCommit, Meta, Publisher
from broker.core.resident_calls import ResidentCalls
from broker.core.states import Action, CallSession, CallState, Party, Role
from broker.core.store import Store, StoreUnavailable, call_from_row, write_transition
from broker.core.trtc import Trtc, trtc_user_ids
from broker.core.wire.call_views import ActiveCalls, CallStarted, HistoryRow, SessionView, StartedInfo
from broker.core.wire.calls import (
    CallInfo,
    ControlMessage,
    ErrorBody,
    control_notice,
    incoming_call_encoder,
    snapshot_url,
)

__all__ = ["CallService", "Publisher", "iso"]

log = logging.getLogger("intercom.calls")

WIRE_ACTIONS = {a.value for a in (Action.ANSWERED, Action.REJECTED, Action.TIMEOUT, Action.HANGUP, Action.CANCELLED)}
SERVER = Party(Role.SERVER, "server")
RETRY_S = 1.0  # a deadline whose transition could not be stored is retried after this

def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_ms() -> int:
    return int(time.time() * 1000)


class CallService:
    def __init__(
        self,
        store: Store,
        directory: Directory,
        trtc: Trtc,
        config: CallsConfig,
        publisher: Publisher,
        clock: Callable[[], float] = time.time,
        site: SiteConfig | None = None,
    ) -> None:
        self.store = store
        self.directory = directory
        self.trtc = trtc
        self.config = config
        self.clock = clock
        # Everything the service publishes goes through the group commit: never before its commit.
        self.journal = GroupCommit(store, publisher)
        self.publisher: Publisher = self.journal
        # intercom features: who is not rung (DND), who is rung next (forwarding), what each resident missed
        site = site or SiteConfig()
        self.dnd = DoNotDisturb(store, site.timezone, clock)
        self.forwarding = Forwarding(store, directory, site, clock)
        self.resident_calls = ResidentCalls(store, directory, self.journal, config.history_limit_max)
        # The client ids a party has connected over MQTT (the assembly binds presence); None: unknown, tell always.
        self.connected_clients: Callable[[Party], frozenset[str]] | None = None
        # Observers for /metrics (broker/ops/metrics.py): a setup's seconds from request to invites sent
        # (after its commit), and every call that ended.
        self.on_setup: Callable[[float], None] | None = None
        self.on_ended: Callable[[CallSession], None] | None = None
        self._active: dict[str, CallSession] = {}
        self._by_device: dict[str, str] = {}
        self._by_household: dict[str, str] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._day: tuple[int, str] = (-1, "")
        self.lag = LoopLag()
        self.admission = CallAdmission(config.max_setups_per_s, config.setup_burst, config.max_active_calls,
                                       config.max_loop_lag_ms / 1000, lag=lambda: self.lag.lag_s)

    # lifecycle ----------------------------------------------------------------------------------

    def recover(self) -> int:
        """Reload live calls from sqlite after a restart and re-arm their timers."""
        calls = self.store.active_calls()
        for call in calls:
            self._remember(call)
            self._arm(call)
        return len(calls)

    def close(self) -> None:
        self.journal.flush()
        log.info("call service closing: %d transitions stored in %d group commits",
                 self.journal.staged, self.journal.commits)
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self.lag.stop()

    @property
    def active_count(self) -> int:
        return len(self._active)

    def after_commit(self, send: Callable[[], None]) -> None:
        """Run `send` once every transition staged so far is committed (a PUBACK that must not precede it)."""
        self.journal.after(send)

    @contextmanager
    def reporting_failure(self, report: Callable[[], None]) -> Iterator[None]:
        """Transitions staged inside this block commit at the end of the loop tick; should that commit
        fail, `report` runs (the sender hears the same 500 a failed synchronous write gives)."""
        staged = self.journal.staged
        yield
        if self.journal.staged != staged:
            self.journal.on_failure(report)

    async def durable(self) -> None:
        """Wait until every transition made so far is committed (StoreError if it could not be)."""
        await self.journal.durable()

    # starting a call ------------------------------------------------------------------------------

    def start_call(
        self,
        device_id: str,
        household_number: str | None = None,
        resident_id: str | None = None,
        timestamp: int | None = None,
    ) -> CallStarted:
        started = time.perf_counter()
        device = self.directory.row("devices", device_id)
        if resident_id is not None:
            resident = self.directory.row("residents", resident_id)
            household = resident["household_number"]
            targets: tuple[str, ...] = (resident_id,)
        else:
            household = household_number or device["household_number"]
            self.directory.row("households", household)
            targets = tuple(self.directory.resident_ids(household))
            if not targets:
                raise NotFound(f"household '{household}' has no residents to call")
        check_call_scope(device, household)
        if device_id in self._by_device:
            raise Busy(f"device '{device_id}' is already in call {self._by_device[device_id]}")
        if household in self._by_household:
            raise Busy(f"household '{household}' is already in call {self._by_household[household]}")
        self.lag.start()
        self.admission.admit(len(self._active))  # 503 now rather than a queue nobody bounds

        now = self.clock()
        call_id = f"call-{self._date(now)}-{secrets.token_hex(6)}"
        dnd, forward_to, forward_after_s = self._ring_rules(device, household, targets, now)
        call = states.new_call(call_id, device["device_id"], household, targets, now,
                               self.config.ring_timeout_s, self.config.max_duration_s, dnd, forward_to, forward_after_s)
        self._stage(None, call, Party(Role.DEVICE, device_id).key, "initiated", None)
        if not call.ringing:
            # Every target is in do-not-disturb: the call is stored (each target missed it) and ends at once.
            self._transition(call, SERVER, Action.DND, None)
            raise Conflict(f"call {call_id} not rung: every resident called ({', '.join(targets)}) is in "
                           "do-not-disturb", "dnd")
        self._remember(call)
        self._arm(call)
        rung = [r for r in targets if r in call.ringing] if call.dnd else targets
        # Clocks: the reply's `call_info.timestamp` echoes the caller's own `timestamp` (its clock, validated
        # epoch ms) when it sent one; every other `timestamp` the server sends is the server's clock.
        ts = now_ms()
        call_info: StartedInfo = {"call_id": call_id, "action": "initiated",
                                  "timestamp": timestamp if timestamp is not None else ts}
        incoming = incoming_call_encoder(call_id, device_id, household,
                                         {"call_id": call_id, "action": "initiated", "timestamp": ts},
                                         self.config.ring_timeout_s, ts)
        # MQTT 5: an invite is never delivered once the ring time is over (e.g. queued for a phone that was offline)
        ring = Meta(expiry_s=math.ceil(self.config.ring_timeout_s), valid=functools.partial(self._is_live, call_id))
        for rid in rung:
            rtc = self.trtc.call_credentials(f"resident_{rid}", call_id)
            self.publisher.publish(topics.incoming(rid), incoming(rtc), qos=1, meta=ring)
        if (on_setup := self.on_setup) is not None:
            self.journal.after(lambda: on_setup(time.perf_counter() - started))
        # One INFO line per call, when it ends (it names everyone): ~20 µs a line at 1,000 calls/s.
        log.debug("call %s started by device %s ringing %s", call_id, device_id, ",".join(targets))
        reply: CallStarted = {
            "call_id": call_id,
            "device_id": device_id,
            "household_number": household,
            "target_resident_ids": list(targets),
            "call_info": call_info,
            "tencen_rtc": self.trtc.call_credentials(f"device_{device_id}", call_id),
            "ring_timeout_s": self.config.ring_timeout_s,
            "timestamp": ts,
        }
        if call.dnd:
            reply["dnd_resident_ids"] = sorted(call.dnd)
        return reply

    # actions ------------------------------------------------------------------------------------

    def act(self, actor: Party, info: CallInfo, client_id: str | None = None) -> None:
        """A device or resident action from REST or MQTT; `client_id`: which of the party's clients took it."""
        if info.action not in WIRE_ACTIONS:
            raise BadRequest(f"call_info.action: must be one of {', '.join(sorted(WIRE_ACTIONS))}, got '{info.action}'")
        self._transition(self._load(info.call_id), actor, Action(info.action), info.reason, client_id)

    def end_session(self, call_id: str, reason: str | None) -> None:
        call = self._load(call_id)
        if call.state is CallState.ENDED:
            raise Conflict(f"call {call_id} has already ended ({call.end_reason})", "call_ended")
        self._transition(call, SERVER, Action.FORCE, reason)

    def party_offline(self, party: Party, offline_since: float, grace_s: float) -> float | None:
        """End the live calls of a party offline since `offline_since`, once it has been offline for
        `grace_s` *during* the call: counted from the later of the drop and the party joining the call
        (a device: the call's start; a resident: its answer). Returns when to look again for a call
        the party joined after it dropped (its own grace not over yet), else None."""
        again: float | None = None
        now = self.clock()
        for call in list(self._active.values()):
            if party.role is Role.DEVICE and call.device_id == party.id:
                joined = call.created_at
            elif party.role is Role.RESIDENT and call.answered_by == party.id and call.connected_at is not None:
                joined = call.connected_at
            else:
                continue
            due = max(offline_since, joined) + grace_s
            if due <= now:
                self._transition(call, SERVER, Action.PARTY_OFFLINE, party.key)
            else:
                again = due if again is None else min(again, due)
        return again

    def resident_for(self, call_id: str, named: str | None) -> str:
        """Which resident an anonymous caller naming `named` (or nobody) speaks for (400 when the call cannot say)."""
        return self.unnamed_resident_actor(call_id, named, household_may_act=False).id

    def unnamed_resident_actor(self, call_id: str, named: str | None, household_may_act: bool) -> Party:
        """Who a REST resident action without a token is from: the resident the body names, else the party the
        call's state names (`states.unnamed_actor`). That is the household when several residents ring: allowed
        for an anonymous caller in local-only mode (`household_may_act`), else 400 `resident_id_required`."""
        if named is not None:
            return Party(Role.RESIDENT, named)
        call = self._load(call_id)
        actor = states.unnamed_actor(call)
        if actor.role is Role.HOUSEHOLD and not household_may_act:
            raise BadRequest(
                f"resident_id: required, this call rings residents {', '.join(call.phase_targets)}: add "
                "\"resident_id\" to the body, or send the resident's token (Authorization: Bearer <token>)",
                "resident_id_required")
        return actor

    def device_for(self, call_id: str) -> str:
        return self._load(call_id).device_id

    def _is_live(self, call_id: str) -> bool:
        """Is the call still ringing or connected? Its invites are not delivered after (to 3.1.1 or v5
        subscribers, e.g. queued for a phone that was offline), as they are not after the ring time."""
        return call_id in self._active

    def live(self, call_id: str) -> CallSession | None:
        """The call if it is ringing or connected, else None (read-only: sessions are frozen)."""
        return self._active.get(call_id)

    def live_call_of_device(self, device_id: str) -> CallSession | None:
        call_id = self._by_device.get(device_id)
        return self._active.get(call_id) if call_id is not None else None

    def door_opened(self, call_id: str, by: str) -> None:
        """End a live call because its door was opened by `by` ("resident:2" or "admin")."""
        self._transition(self._load(call_id), SERVER, Action.DOOR_OPENED, by)

    # reads --------------------------------------------------------------------------------------

    def session(self, call_id: str, viewer: Party | None) -> SessionView:
        call = self._load(call_id)
        if viewer is not None and viewer.role is not Role.SERVER and not call.is_party(viewer):
            raise Forbidden(f"{viewer.role} {viewer.id} is not a party to call {call_id}")
        is_resident = viewer is not None and viewer.role is Role.RESIDENT
        user = f"resident_{viewer.id}" if viewer is not None and is_resident else f"device_{call.device_id}"
        return {
            "call_id": call.call_id,
            "device_id": call.device_id,
            "resident_id": call.answered_by,
            "start_time": iso(call.created_at),
            "status": str(call.state),
            "last_activity": iso(call.last_activity),
            "tencen_rtc": self.trtc.call_credentials(user, call.call_id),
            "household_number": call.household_number,
            "target_resident_ids": list(call.targets),
            "end_reason": str(call.end_reason) if call.end_reason else None,
            "ended_at": iso(call.ended_at),
            # the ring phase (forwarding), who is ringing, who was skipped (DND), which client answered
            "ring_phase": "forwarded" if call.forwarded_at is not None else "first",
            "ringing_resident_ids": sorted(call.ringing),
            "dnd_resident_ids": sorted(call.dnd),
            "forward_to": list(call.forward_to),
            "forward_after_s": call.forward_after_s if call.forward_to else None,
            "forwarded_at": iso(call.forwarded_at),
            "answered_client_id": call.answered_client,
            "trtc_user_ids": trtc_user_ids(call.device_id, call.all_targets),
        }

    def history(self, filters: dict[str, str], limit: int, active_only: bool = False) -> list[HistoryRow]:
        limit = max(1, min(limit, self.config.history_limit_max))
        rows = self.store.list_calls(filters, limit, active_only=active_only)
        return [history_view(r) for r in rows]

    def history_page(self, filters: dict[str, str], limit: int, since: float | None, until: float | None,
                     after: tuple[float, str] | None, search: str | None = None,
                     ) -> tuple[list[HistoryRow], tuple[float, str] | None]:
        """One page of history, newest first, in [since, until); the key to pass as `after` for the next page."""
        limit = max(1, min(limit, self.config.history_limit_max))
        rows = self.store.list_calls(filters, limit + 1, since=since, until=until, after=after, search=search)
        more = len(rows) > limit
        rows = rows[:limit]
        key = (rows[-1]["start_time"], rows[-1]["call_id"]) if more else None
        return [history_view(r) for r in rows], key

    def active_for(self, party: Party) -> ActiveCalls:
        ids = [c.call_id for c in self._active.values() if c.is_party(party)
               and (party.role is not Role.RESIDENT or (c.state is CallState.RINGING and party.id in c.ringing)
                    or c.answered_by == party.id)]
        return [self.session(i, party) for i in ids]

    # internals ----------------------------------------------------------------------------------

    def _date(self, now: float) -> str:
        """YYYYMMDD (UTC) of `now` for call ids, formatted once a day."""
        day = int(now // 86400)
        if day != self._day[0]:
            self._day = (day, f"{datetime.fromtimestamp(now, UTC):%Y%m%d}")
        return self._day[1]

    def _load(self, call_id: str) -> CallSession:
        call = self._active.get(call_id)
        if call is not None:
            return call
        row = self.store.get_call(call_id)
        if row is None:
            raise NotFound(f"call '{call_id}' not found")
        return call_from_row(row)

    def _transition(self, call: CallSession, actor: Party, action: Action, reason: str | None,
                    client_id: str | None = None) -> None:
        # the table's refusals are domain errors already (403 Forbidden, 409 InvalidTransition)
        updated, notices = states.apply(call, actor, action, self.clock(), reason, self.config.reject_policy,
                                        client_id)
        if updated is call:
            return
        # Persist first: staged now, and the notices below leave only after the group's commit.
        self._stage(call, updated, actor.key, str(action), reason, client_id)
        if updated.state is CallState.ENDED:
            self._forget(updated)
        else:
            self._remember(updated)
            if updated.deadline != call.deadline:
                self._arm(updated)
        ts = now_ms()
        for n in notices:
            if n.action == "incoming":
                self._ring_fallback(updated, n.to.id, ts)
                continue
            if n.to == actor and not self._has_other_clients(actor, n.client_id):
                continue  # "elsewhere" to the taker's own topic: only a second client of that resident needs it
            self.publisher.publish(self._control_topic(n.to), control_notice(
                call.call_id, n.action, n.reason, ts, n.resident_id, n.client_id, n.forward_to), qos=1)
        if updated.state is CallState.ENDED:
            if self.on_ended is not None:
                self.on_ended(updated)
            missed = [rid for rid, outcome in outcomes(updated).items() if outcome == Outcome.MISSED]
            if missed:
                self.resident_calls.call_missed(call.call_id, missed)  # retained, after this transition's commit
                self.journal.on_failure(self.resident_calls.forget)
            log.info("call %s from device %s to household %s (%s): ended %s by %s %s after %.1f s, answered by %s",
                     call.call_id, call.device_id, call.household_number, ",".join(call.targets),
                     updated.end_reason, actor.key, action, updated.last_activity - call.created_at,
                     call.answered_by or "nobody")
        else:
            log.debug("call %s: %s %s -> %s", call.call_id, actor.key, action, updated.state)

    def _ring_rules(self, device: Any, household: str, targets: tuple[str, ...],
                    now: float) -> tuple[tuple[str, ...], tuple[str, ...], float | None]:
        """(targets in DND, fallback residents not in DND, forward_after_s); an emergency device skips DND."""
        emergency = bool(device.get("emergency"))
        forward_to, after = self.forwarding.resolve(household)

        def in_dnd(rid: str) -> bool:
            if emergency:
                return False
            return self.dnd.resident_in_dnd(rid, self.directory.row("residents", rid)["household_number"], now)

        return tuple(r for r in targets if in_dnd(r)), tuple(r for r in forward_to if not in_dnd(r)), after

    def _ring_fallback(self, call: CallSession, resident_id: str, ts: int) -> None:
        """The incoming call of a forwarded call's fallback resident: the same call, `call_info.action` forwarded."""
        incoming = incoming_call_encoder(call.call_id, call.device_id, call.household_number,
                                         {"call_id": call.call_id, "action": "forwarded", "timestamp": ts},
                                         call.ring_timeout_s, ts)
        rtc = self.trtc.call_credentials(f"resident_{resident_id}", call.call_id)
        self.publisher.publish(topics.incoming(resident_id), incoming(rtc), qos=1)

    def _has_other_clients(self, party: Party, taker: str | None) -> bool:
        """Whether a resident that just acted has another connected client to stop ringing. A single-client
        app (the seed's) then never hears `cancelled` for the call it just answered."""
        return self.connected_clients is None or bool(self.connected_clients(party) - {taker})

    def send_error(self, party: Party, code: int, message: str, call_info: dict[str, Any],
                   request_id: str | None = None, reason: str | None = None,
                   reply_to: tuple[str, bytes | None] | None = None) -> None:
        """Tell an MQTT party that its message was refused (`message` is already `category: detail`), on its
        control topic, or on `reply_to` = (Response Topic, Correlation Data) of an MQTT 5 request."""
        msg = ControlMessage(call_info=call_info, error=ErrorBody(code=code, message=message, reason=reason),
                             request_id=request_id)
        if reply_to is not None:
            self.publisher.publish(reply_to[0], msg.model_dump_json(exclude_none=True).encode(), qos=1,
                                   meta=Meta(correlation=reply_to[1]))
            return
        self._send_control(party, msg)

    def _send_control(self, party: Party, msg: ControlMessage) -> None:
        self.publisher.publish(self._control_topic(party), msg.model_dump_json(exclude_none=True).encode(), qos=1)

    @staticmethod
    def _control_topic(party: Party) -> str:
        return topics.device_control(party.id) if party.role is Role.DEVICE else topics.resident_control(party.id)

    def _stage(self, before: CallSession | None, after: CallSession, actor: str, action: str,
               reason: str | None, client_id: str | None = None) -> None:
        """Write the transition into the open group (StoreError: nothing written, nothing changed)."""
        from_state = "new" if before is None else before.state.value
        self.journal.stage(lambda conn: write_transition(conn, after, actor, action, reason, from_state, client_id),
                           lambda: self._undo(before, after))

    def _undo(self, before: CallSession | None, after: CallSession) -> None:
        """The group holding this transition did not commit: back to `before` (newest undone first)."""
        if before is None:
            self._forget(after)
            return
        self._remember(before)
        self._arm(before, min_delay=RETRY_S)  # a deadline that failed to commit is retried, not spun on

    def _remember(self, call: CallSession) -> None:
        self._active[call.call_id] = call
        self._by_device[call.device_id] = call.call_id
        self._by_household[call.household_number] = call.call_id

    def _forget(self, call: CallSession) -> None:
        self._active.pop(call.call_id, None)
        if self._by_device.get(call.device_id) == call.call_id:
            del self._by_device[call.device_id]
        if self._by_household.get(call.household_number) == call.call_id:
            del self._by_household[call.household_number]
        if (handle := self._timers.pop(call.call_id, None)) is not None:
            handle.cancel()

    def _arm(self, call: CallSession, min_delay: float = 0.0) -> None:
        if (handle := self._timers.pop(call.call_id, None)) is not None:
            handle.cancel()
        if call.deadline is None:
            return
        delay = max(min_delay, call.deadline - self.clock())
        self._timers[call.call_id] = asyncio.get_running_loop().call_later(delay, self._on_deadline, call.call_id)

    def _on_deadline(self, call_id: str) -> None:
        self._timers.pop(call_id, None)
        call = self._active.get(call_id)
        if call is None:
            return
        action = states.due_action(call)
        try:
            self._transition(call, SERVER, action, None)
        except Exception as exc:
            # A failed write must not kill the timer path for good: retry shortly. A locked database is
            # logged once by the store's write gate, which refuses the retries without blocking.
            if isinstance(exc, StoreUnavailable):
                log.debug("call %s: deadline transition refused (%s), retrying in 1 s", call_id, exc)
            else:
                log.exception("call %s: deadline transition failed, retrying in 1 s", call_id)
            self._timers[call_id] = asyncio.get_running_loop().call_later(RETRY_S, self._on_deadline, call_id)


def history_view(r: dict[str, Any]) -> HistoryRow:
    """A stored call as `GET /api/calls` shows it."""
    return {
        "call_id": r["call_id"], "device_id": r["device_id"], "household_number": r["household_number"],
        "target_resident_ids": r["target_resident_ids"], "resident_id": r["resident_id"],
        "status": r["status"], "end_reason": r["end_reason"], "start_time": iso(r["start_time"]),
        "connected_at": iso(r["connected_at"]), "ended_at": iso(r["ended_at"]),
        "last_activity": iso(r["last_activity"]),
        "snapshot_url": snapshot_url(r["call_id"]) if r.get("snapshot_at") else None,
        "door_opened_by": r.get("door_opened_by"), "door_opened_at": iso(r.get("door_opened_at")),
        # as in the session: the ring phase, who rings now, who DND skipped, forwarding
        "ring_phase": "forwarded" if r.get("forwarded_at") is not None else "first",
        "ringing_resident_ids": sorted(r.get("ringing") or ()),
        "dnd_resident_ids": sorted(r.get("dnd_resident_ids") or ()),
        "forward_to": list(r.get("forward_to") or ()),
        "forward_after_s": r.get("forward_after_s") if r.get("forward_to") else None,
        "forwarded_at": iso(r.get("forwarded_at")),
        "answered_client_id": r.get("answered_client_id"),
        "trtc_user_ids": trtc_user_ids(r["device_id"], r["target_resident_ids"] + (
            list(r.get("forward_to") or ()) if r.get("forwarded_at") is not None else [])),
    }
