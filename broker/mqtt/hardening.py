"""Security and limits layer over amqtt 0.12.1's Broker: lock the box down.

A mixin placed before the fast-path mixin in IntercomBroker's bases. It owns the connection
lifecycle up to the message loop: accept-time refusals (max connections, per-IP CONNECT rate),
the packet guard (CONNECT timeout, keepalive x1.5, max packet size, malformed packets), CONNECT
admission (authentication, Will-topic ACL, flapping ban), and a session adoption that only touches
an existing session after the newcomer has authenticated. CONNECTs with one client id are handled
one at a time (takeover, [MQTT-3.1.4-2]), and `revoke` ends the sessions of a principal whose
token was re-issued or deleted. Overrides: `_create_server_instance` (every TCP/TLS socket is a
`protocol.MqttProtocol`, every WebSocket one too, fed by `ws_listener.pump`), `_authenticate`, `_session_monitor`.
Accept-time refusals live in `broker/mqtt/accept_gate.py`, packet rules in `broker/mqtt/packet_guard.py`,
the connection in `broker/mqtt/protocol.py`, the WebSocket listener in `broker/mqtt/ws_listener.py`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from broker.accept_loop import serve
from broker.config import LimitsConfig
from broker.limiter import LogThrottle, is_exempt
from broker.mqtt.accept_gate import AcceptGate
from broker.mqtt.amqtt_compat import Action, ListenerConfig, ListenerType
from broker.mqtt.connection import Connection
from broker.mqtt.flapping import FlappingGuard
from broker.mqtt.handle_connect import session_expired, take_pending_will
from broker.mqtt.hooks import REFUSAL, REVOKED
from broker.mqtt.keyed_lock import KeyedLock
from broker.mqtt.protocol import MqttProtocol
from broker.mqtt.quota import owner_of, principal_of
from broker.mqtt.session import Session
from broker.mqtt.ws_listener import TimedConnection, pump
from broker.mqtt.ws_listener import serve as serve_ws
from broker.web_guard import WebGuard

if TYPE_CHECKING:
    from broker.mqtt.routing import RoutingMixin

    _Base: TypeAlias = RoutingMixin  # for the type checker: the session table and subscription cleanup
else:
    _Base = object

__all__ = ["HardeningMixin"]

log = logging.getLogger("intercom.hardening")
_quiet = LogThrottle()  # client-driven lines

# MQTT 3.1.1 CONNACK return codes (§3.2.2.3)
ACCEPTED, UNAVAILABLE, REFUSED = 0, 3, 5
_TAKEOVER_WAIT_S = 5.0


class HardeningMixin(_Base):
    """Connection-level limits and protocol checks; see docs/security.md."""

    # amqtt's Broker provides these; declared for the type checker.
    _sessions: dict[str, tuple[Session, Connection | None]]  # None: an offline session (no connection)
    plugins_manager: Any
    config: Any
    listeners_config: Any

    limits: LimitsConfig = LimitsConfig()
    # Host/Origin rules of the WebSocket listener (set by the server, shared with REST); default: loopback names
    web_guard: WebGuard = WebGuard(["localhost", "127.0.0.1", "::1"], [])
    # listener name -> TLS context; set by the server before start()
    tls_contexts: dict[str, ssl.SSLContext] = {}  # noqa: RUF012 - replaced per instance, never mutated

    # -- state ----------------------------------------------------------------------------------

    def _hardening(self) -> _State:
        state: _State | None = getattr(self, "_hardening_state", None)
        if state is None:
            state = _State(self.limits)
            self._hardening_state = state
        return state

    def lift_ban(self, client_id: str) -> bool:
        """Lift a client id's flapping ban (an operator's `intercom-broker admin unban`); False if none."""
        return self._hardening().flapping.lift(client_id)

    @property
    def open_connections(self) -> int:
        """MQTT connections currently open (all listeners), as counted for `limits.max_connections`."""
        return self._hardening().gate.open

    # -- listeners ------------------------------------------------------------------------------

    async def _create_server_instance(
        self, listener_name: str, listener_type: ListenerType, address: str | None, port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> Any:
        context = self.tls_contexts.get(listener_name, ssl_context)
        limits = self.limits
        if listener_type == ListenerType.WS:
            return await serve_ws(partial(self._ws_connected, listener_name=listener_name), address, port, context,
                                  limits, self.web_guard)
        if listener_type != ListenerType.TCP:
            return await super()._create_server_instance(
                listener_name, listener_type, address, port, context)
        # one asyncio.Protocol per socket (broker.mqtt.protocol): the accept-time refusals happen in its
        # connection_made, and an idle connection holds no task (what makes many connections and a CONNECT flood cheap)
        gate = self._hardening().gate

        def protocol() -> asyncio.Protocol:
            return cast(asyncio.Protocol, MqttProtocol(self, listener_name, gate))  # a Protocol by its methods

        return await serve(f"MQTT listener {listener_name}", protocol, address, port, ssl_context=context,
                           ssl_handshake_timeout=limits.connect_timeout_s)  # our accept loop: survives EMFILE

    async def _ws_connected(self, websocket: TimedConnection, listener_name: str) -> None:
        await pump(websocket, MqttProtocol(self, listener_name, self._hardening().gate, websocket.accepted_at))

    # -- CONNECT --------------------------------------------------------------------------------

    async def _authenticate(self, session: Session, listener: ListenerConfig) -> bool:
        """amqtt's plugin vote, then the Will topic against the publish ACL (Mosquitto does both).

        The vote is amqtt's rule (`Broker._authenticate`: every plugin that answers True or False must say True,
        and at least one must answer), with each plugin awaited in turn instead of through a task per plugin."""
        pm: Any = self.plugins_manager
        votes = [await plugin.authenticate(session=session) for plugin in pm._auth_plugins]
        answers = [vote for vote in votes if vote is not None]
        if not answers or not all(answers):
            return False
        if session.will_flag and session.will_topic is not None and not await self._topic_filtering(
                session, session.will_topic, Action.PUBLISH):
            _quiet.log(log, logging.WARNING, f"will {session.remote_address}",
                       "refused CONNECT of %r: Will topic %r not allowed", session.client_id, session.will_topic)
            session.attributes[REFUSAL] = REFUSED
            return False
        return True

    async def _admit(self, session: Session, listener_name: str) -> int:
        """The CONNACK return code for this CONNECT."""
        state = self._hardening()
        cid = session.client_id or ""
        watched = not is_exempt(session.remote_address, self.limits.exempt_networks)
        if watched and state.flapping.banned(cid):
            _quiet.log(log, logging.WARNING, f"banned {cid}", "refused CONNECT of %r: client id banned for flapping",
                       cid)
            return UNAVAILABLE
        if not await self._authenticate(session, self.listeners_config[listener_name]):
            code: int = session.attributes.pop(REFUSAL, REFUSED)
            return code
        if watched and not state.flapping.connected(cid):
            log.warning("banned client id %s for %.0f s: more than %d connects in %.0f s", cid,
                        self.limits.flapping.ban_s, self.limits.flapping.max_connects, self.limits.flapping.window_s)
            return UNAVAILABLE
        return ACCEPTED

    async def _end_previous_connection(self, client_id: str) -> None:
        """Takeover: close the live connection holding `client_id` and wait until amqtt has let it go."""
        live = self._hardening().live.get(client_id)
        if live is None:
            return
        _quiet.log(log, logging.WARNING, f"again {client_id}", "client %r connected again: closing its previous "
                   "connection", client_id)
        await live.close()
        with suppress(TimeoutError):
            await asyncio.wait_for(live.done.wait(), _TAKEOVER_WAIT_S)

    def revoke(self, owns: Callable[[Session], bool]) -> asyncio.Task[list[str]]:
        """End every session `owns` selects, now: its connection is dropped (no Will, as Mosquitto's
        dynamic-security kick), the session is discarded, a CONNECT still being admitted is refused.

        The sessions are chosen synchronously, so a session opened after this call (with a new token)
        is never touched. The task's result: the client ids whose sessions were discarded.
        """
        state = self._hardening()
        victims = [s for s, _ in self._sessions.values() if owns(s)]
        victims += [s for s in state.admitting.values() if owns(s)]
        for session in victims:
            session.attributes[REVOKED] = True
            session.will_flag = False
            take_pending_will(session)  # an MQTT 5 delayed Will waiting for its delay: never published
            session.clean_session = True  # nothing of it is kept: not in memory, not on disk
        return asyncio.ensure_future(self._end_sessions(victims))

    async def _end_sessions(self, victims: list[Session]) -> list[str]:
        state = self._hardening()
        for session in victims:  # stop routing to them first, all at once
            await self._del_all_subscriptions(session)
        ended = []
        for session in victims:
            cid = session.client_id or ""
            async with state.connecting.hold(cid):
                live = state.live.get(cid)
                if live is not None and live.session is session:
                    log.warning("closing the connection of %s: its credentials were revoked", cid)
                    await live.close()
                    with suppress(TimeoutError):
                        await asyncio.wait_for(live.done.wait(), _TAKEOVER_WAIT_S)
                entry = self._sessions.get(cid)
                if entry is not None and entry[0] is session:
                    await self._delete_session(cid)
                    ended.append(cid)
        return ended

    async def _session_monitor(self) -> None:
        """amqtt's monitor (reap disconnected clean sessions, expire old persistent ones), except that a
        session is only removed if it is still the one found disconnected: amqtt popped by client id after
        an await, which could remove a session whose client had just reconnected."""
        while True:
            expiry = self.config.session_expiry_interval
            now = time.time()
            stale = [(cid, s) for cid, (s, _) in self._sessions.items()  # MQTT 5: each its own expiry
                     if s.transitions.state == "disconnected" and (
                         s.is_anonymous or s.clean_session or session_expired(s, now, expiry))]
            for cid, stale_session in stale:
                current = self._sessions.get(cid)
                if current is not None and current[0] is stale_session and stale_session.transitions.state == \
                        "disconnected":
                    if (due := take_pending_will(stale_session)) is not None:  # the session ends: its Will is due
                        self._publish_will(stale_session, due)
                    await self._cleanup_session(cid)
            await asyncio.sleep(1)

    def _over_session_cap(self, session: Session) -> bool:
        """Whether registering `session` would give its principal more than `limits.max_sessions_per_principal`
        persistent sessions (resuming one it has is always allowed; anonymous local-only clients are not
        counted). Called with nothing awaited until the registration, so concurrent CONNECTs cannot overshoot."""
        cid = session.client_id or ""
        if session.clean_session or not session.username:
            return False
        entry = self._sessions.get(cid)
        if entry is not None and entry[0] is session:
            return False
        principal = principal_of(cid, session.username)
        held = sum(1 for other, (s, _) in self._sessions.items()
                   if other != cid and not s.clean_session and owner_of(other, principal))
        if held < self.limits.max_sessions_per_principal:
            return False
        _quiet.log(log, logging.WARNING, f"sessions {principal}", "refused CONNECT of %r: %r has %d persistent "
                   "sessions (limits.max_sessions_per_principal)", cid, principal, held)
        return True

class _State:
    """Connection-lifecycle state of one broker."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.gate = AcceptGate(limits)
        self.flapping = FlappingGuard(limits.flapping.max_connects, limits.flapping.window_s, limits.flapping.ban_s)
        self.live: dict[str, Connection] = {}  # registered connections by client id
        self.connecting = KeyedLock()  # per client id: one CONNECT (or revocation) at a time
        # CONNECTs between their arrival and their registration, by id(): amqtt's Session compares by client id
        self.admitting: dict[int, Session] = {}
