"""A connection's life on the one broker (MQTT 3.1.1 and 5): CONNECT, admission, session, Will, disconnect.

A connection's socket (`protocol.MqttProtocol`) hands its first packet here (`open_session`); the CONNECT
says the version. Every client uses the same admission (`HardeningMixin._admit`: flapping ban, the auth
plugin, the Will-topic ACL), the same session table, subscription index, ACL, outlets and persistence; a
registered connection is served by `connection.Connection` until the socket calls `close_session`.

Session semantics (§3.1.2.4, §3.1.2.11.2): Clean Start discards an existing session; the Session Expiry
Interval (capped at `limits.session_expiry_s`, the cap stated in CONNACK) says how long the session
outlives the connection, 0 meaning it ends with it (the engine's `clean_session`). The Will is published
when the connection ends without DISCONNECT 0x00, after its Will Delay Interval or when the session ends,
whichever comes first, unless the client resumes the session before that [MQTT-3.1.3-9]. A pending Will
is cancelled by a resume over 3.1.1 or 5 and by revocation (and so deletion) of its principal, published
at once when the session ends first (a clean takeover, expiry), and never for a session that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import string
import time
from typing import TYPE_CHECKING, Any, TypeAlias

from transitions import MachineError

from broker.config import LimitsConfig
from broker.limiter import LogThrottle
from broker.mqtt import codec, encode
from broker.mqtt.amqtt_compat import BrokerEvents
from broker.mqtt.connection import Connection
from broker.mqtt.hooks import PROTOCOL, REVOKED, SESSION_EXPIRY, SUB_OPTIONS
from broker.mqtt.message import MessageProps, props_of
from broker.mqtt.reason import ProtocolError, Reason
from broker.mqtt.send_publish import link_for
from broker.mqtt.session import Session

if TYPE_CHECKING:
    from broker.mqtt.fast_path import FastPathMixin
    from broker.mqtt.protocol import MqttProtocol

    _Base: TypeAlias = FastPathMixin  # for the type checker: the Will goes out by `publish_will`
else:
    _Base = object

__all__ = ["ConnectMixin", "assigned_client_id", "session_expired", "take_pending_will"]

log = logging.getLogger("intercom.mqtt5")
_quiet = LogThrottle()  # refused CONNECTs are client-driven
_WILL = "intercom.v5.will"  # session attribute: the pending delayed Will, (timer, will)
_NEVER = 0xFFFFFFFF
_ID_CHARS = string.ascii_letters + string.digits
QUOTA_EXCEEDED = Reason.QUOTA_EXCEEDED
# 3.1.1 CONNACK return codes (what admission answers) -> MQTT 5 CONNACK reason codes
_REASON = {1: Reason.UNSUPPORTED_PROTOCOL_VERSION, 2: Reason.CLIENT_ID_NOT_VALID, 3: Reason.SERVER_UNAVAILABLE,
           4: Reason.BAD_CREDENTIALS, 5: Reason.NOT_AUTHORIZED}


def assigned_client_id() -> str:
    """A Client Identifier for a client that sent none (§3.1.3.1): random, in amqtt's format."""
    return "amqtt/" + "".join(secrets.choice(_ID_CHARS) for _ in range(16))


def session_expired(session: Session, now: float, default_s: float | None) -> bool:
    """Whether a disconnected persistent session has outlived its expiry (its own for MQTT 5)."""
    expiry = session.attributes.get(SESSION_EXPIRY, default_s)
    last = session.last_disconnect_time
    return expiry is not None and last is not None and last + expiry <= now


def take_pending_will(session: Session) -> _Will | None:
    """Cancel `session`'s delayed Will; the Will, for a caller whose session ends now (it is due), else None."""
    pending: tuple[asyncio.TimerHandle, _Will] | None = session.attributes.pop(_WILL, None)
    if pending is None:
        return None
    timer, will = pending
    timer.cancel()
    return will


class _Will:
    """A Will to publish when a v5 connection ends abnormally (§3.1.3.2)."""

    __slots__ = ("delay", "payload", "props", "qos", "retain", "topic")

    def __init__(self, c: codec.Connect) -> None:
        assert c.will_topic is not None
        self.topic = c.will_topic
        self.payload = c.will_payload
        self.qos = c.will_qos
        self.retain = c.will_retain
        self.props = MessageProps.received(c.will_forward, c.will_props.get(codec.MESSAGE_EXPIRY))
        self.delay: int = c.will_props.get(codec.WILL_DELAY, 0)


class ConnectMixin(_Base):
    """Serves every MQTT connection (3.1.1 and 5) from CONNECT to its end; see the module docstring."""

    limits: LimitsConfig

    async def open_session(self, listener: str, wire: MqttProtocol, packet: tuple[int, bytes]) -> bool:
        """The CONNECT of a new connection (`protocol.MqttProtocol`): admission, session adoption, CONNACK, and
        what a new session gets first. True when it is registered: `close_session` then ends it."""
        server = self._servers.get(listener)
        if server is None:
            return False
        await server.acquire_connection()
        conn = None
        try:
            conn = await self._connect(wire, packet, server)
        finally:
            if conn is None:
                server.release_connection()
        if conn is not None:
            try:
                await self._session_started(conn)
            except Exception:
                log.debug("MQTT connection of %r ended with an error", conn.session.client_id, exc_info=True)
                wire.close()
        return conn is not None

    async def _refuse(self, wire: MqttProtocol, reason: int, why: str, client_id: str | None = None,
                      version: int = codec.V5) -> None:
        """CONNACK refusing the CONNECT: `reason` is a 3.1.1 return code for `version` 4, a reason code for 5."""
        peer = wire.get_peer_info()
        _quiet.log(log, logging.WARNING, f"refused {peer[0] if peer else '?'}",
                   "refused MQTT %s CONNECT of %r: %s (code %#04x)", "5" if version == codec.V5 else "3.1.1",
                   client_id, why, reason)
        with contextlib.suppress(Exception):
            wire.write(encode.encode_connack(False, reason, {}, version))
            await asyncio.wait_for(wire.drain(), 1.0)

    async def _refuse_code(self, wire: MqttProtocol, version: int, code: int, why: str, client_id: str | None) -> None:
        """Refuse with admission's 3.1.1 return code, as MQTT 5's reason code on a v5 connection."""
        await self._refuse(wire, _REASON.get(code, Reason.NOT_AUTHORIZED) if version == codec.V5 else code, why,
                           client_id, version)

    async def _connect(self, wire: MqttProtocol, packet: tuple[int, bytes], server: Any) -> Connection | None:
        try:
            c = codec.decode_connect(packet[1])
        except ProtocolError as exc:
            if wire.framer.protocol == codec.V5:
                await self._refuse(wire, exc.code, str(exc))
            elif exc.code == Reason.UNSUPPORTED_PROTOCOL_VERSION and packet[1][2:6] == b"MQTT":
                await self._refuse(wire, 1, str(exc), version=codec.V311)  # [MQTT-3.1.2-2]
            return None  # anything else the packet guard let through (MQTT 3.1 "MQIsdp"): closed without CONNACK
        if c.version == codec.V311 and not c.clean_start and not c.client_id:
            await self._refuse(wire, 2, "empty client id without clean session", version=codec.V311)
            return None  # [MQTT-3.1.3-8]
        if codec.AUTH_METHOD in c.props:  # no enhanced authentication method is supported (§4.12)
            await self._refuse(wire, Reason.BAD_AUTHENTICATION_METHOD,
                               f"Authentication Method {c.props[codec.AUTH_METHOD]!r}", c.client_id)
            return None
        will = _Will(c) if c.will_topic is not None else None
        if will is not None and c.will_props.get(codec.PAYLOAD_FORMAT) == 1 and not _utf8(c.will_payload):
            await self._refuse(wire, 0x99, "Will payload is not UTF-8", c.client_id)  # (MQTT 5.0 §3.1.3.2.3)
            return None
        session, assigned = self._new_session(c, wire, will)
        code = await self._admit(session, server.listener_name)
        if code != 0:
            await self._refuse_code(wire, c.version, code, "not admitted", session.client_id)
            return None
        # One CONNECT per client id at a time, from takeover to registration, as for 3.1.1 (HardeningMixin);
        # revoke() may refuse it until it is registered.
        state = self._hardening()
        incoming, cid = session, session.client_id
        assert cid is not None
        state.admitting[id(incoming)] = incoming
        try:
            async with state.connecting.hold(cid):
                session, present = await self._adopt(incoming, c.clean_start)
                if incoming.attributes.get(REVOKED):
                    with contextlib.suppress(MachineError, ValueError):
                        session.transitions.disconnect()
                    await self._refuse_code(wire, c.version, 5, "credentials revoked while it was admitted", cid)
                    return None
                if self._over_session_cap(session):
                    with contextlib.suppress(MachineError, ValueError):
                        session.transitions.disconnect()
                    if c.version == codec.V5:
                        await self._refuse(wire, QUOTA_EXCEEDED, "limits.max_sessions_per_principal", cid)
                    else:
                        await self._refuse(wire, 3, "limits.max_sessions_per_principal", cid, codec.V311)
                    return None
                conn = self._register(session, present, assigned, c, wire, server)
        finally:
            state.admitting.pop(id(incoming), None)
        conn.will = will
        return conn

    def _new_session(self, c: codec.Connect, wire: MqttProtocol, will: _Will | None) -> tuple[Session, bool]:
        """The `Session` a CONNECT describes (either version), and whether its client id was assigned."""
        session = Session()
        peer = wire.get_peer_info()
        if peer:
            session.remote_address, session.remote_port = peer[0], peer[1]
        assigned = not c.client_id
        session.client_id = assigned_client_id() if assigned else c.client_id
        if c.version == codec.V5:
            expiry = min(c.props.get(codec.SESSION_EXPIRY, 0), self.limits.session_expiry_s)
            session.attributes[SESSION_EXPIRY] = expiry
            session.attributes[PROTOCOL] = 5
            session.clean_session = expiry == 0  # the engine's "ends with the connection"
        else:  # 3.1.1: a persistent session outlives the connection by `limits.session_expiry_s` (the default)
            session.clean_session = c.clean_start
        session.keep_alive = c.keep_alive
        session.ssl_object = wire.get_ssl_info()
        session.username = c.username
        session.password = c.password.decode("utf-8", "replace") if c.password is not None else None
        if will is not None:
            session.will_flag, session.will_topic, session.will_message = True, will.topic, will.payload
            session.will_qos, session.will_retain = will.qos, will.retain
        return session, assigned

    async def _adopt(self, incoming: Session, clean_start: bool) -> tuple[Session, bool]:
        """The session this connection continues (session present) or starts (§3.1.2.4)."""
        cid = incoming.client_id
        assert cid is not None
        await self._end_previous_connection(cid)  # takeover [MQTT-3.1.4-3]
        entry = self._sessions.get(cid)
        old = entry[0] if entry is not None else None
        due = take_pending_will(old) if old is not None else None
        if old is not None and due is not None and (clean_start or old.clean_session):
            self._publish_will(old, due)  # the old session ends now: its delayed Will is due
        resume = (old is not None and not clean_start and not old.clean_session
                  and not session_expired(old, time.time(), self.limits.session_expiry_s))
        if not resume:
            if old is not None:
                await self._delete_session(cid)
            incoming.parent = 0
            return incoming, False
        assert old is not None
        for attr in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
                     "username", "password", "clean_session", "remote_address", "remote_port"):
            setattr(old, attr, getattr(incoming, attr))
        old.attributes.update(incoming.attributes)
        old.parent = 1
        return old, True

    def _connack_props(self, c: codec.Connect, session: Session, assigned: bool,
                       keep_alive: int) -> codec.Props:
        """CONNACK properties: the box's real limits (§3.2.2.3)."""
        limits = self.limits
        props: codec.Props = {
            codec.RECEIVE_MAXIMUM: min(limits.max_inflight_messages, 65535),
            codec.MAXIMUM_PACKET_SIZE: limits.max_packet_bytes,
            codec.TOPIC_ALIAS_MAXIMUM: limits.topic_alias_maximum,
            codec.RETAIN_AVAILABLE: 1,
            codec.WILDCARD_AVAILABLE: 1,
            codec.SUB_IDS_AVAILABLE: 1,
            codec.SHARED_AVAILABLE: 1,
        }
        if not limits.topic_alias_maximum:
            del props[codec.TOPIC_ALIAS_MAXIMUM]
        requested = c.props.get(codec.SESSION_EXPIRY, 0)
        if requested != session.attributes[SESSION_EXPIRY]:
            # ours differs from the request: CONNACK says which applies (MQTT 5.0 §3.2.2.3.2)
            props[codec.SESSION_EXPIRY] = session.attributes[SESSION_EXPIRY]
        if assigned:
            props[codec.ASSIGNED_CLIENT_ID] = session.client_id
        if keep_alive != c.keep_alive:
            props[codec.SERVER_KEEP_ALIVE] = keep_alive  # [MQTT-3.2.2-21]
        return props

    def _register(self, session: Session, present: bool, assigned: bool, c: codec.Connect, wire: MqttProtocol,
                  server: Any) -> Connection:
        """Register the connection in the session table (takeover and revocation find it), send CONNACK."""
        cid = session.client_id
        assert cid is not None
        cap = self.limits.max_keepalive_s
        keep_alive = c.keep_alive if 0 < c.keep_alive <= cap else cap
        if c.version == codec.V311:  # no Server Keep Alive in 3.1.1: amqtt's grace, then the guard's cap
            delay = self.config.get("timeout-disconnect-delay", 0)
            keep_alive = c.keep_alive + (delay if c.keep_alive > 0 and isinstance(delay, int) else 0)
        with contextlib.suppress(MachineError, ValueError):
            session.transitions.connect()
        link = link_for(c.props, c.version)
        conn = Connection(self, session, wire, link, self.limits.topic_alias_maximum if c.version == codec.V5 else 0,
                          server, present)
        self._sessions[cid] = (session, conn)
        self.router.open_outlet(session)  # conn.outlet
        props = self._connack_props(c, session, assigned, keep_alive) if c.version == codec.V5 else {}
        conn.write(encode.encode_connack(present, 0, props, c.version))
        wire.start_session(conn, keep_alive)
        self._hardening().live[cid] = conn  # what a takeover or a revocation finds
        return conn

    async def _session_started(self, conn: Connection) -> None:
        """What a registered connection gets first: the plugins hear of it, then its in-flight and queued messages."""
        session = conn.session
        outlet = conn.outlet
        self.tell(lambda t: t.session_connected(session))
        if self._has_listeners(BrokerEvents.CLIENT_CONNECTED):
            await self.plugins_manager.fire_event(BrokerEvents.CLIENT_CONNECTED, client_id=session.client_id,
                                                  client_session=session)
            await asyncio.sleep(0)  # let an amqtt plugin's handler run before re-sending
        if outlet is not None and not conn.closed:
            if conn.present:
                outlet.resend_inflight()
            if conn.version == codec.V5:
                self._offline_queue(session, outlet)
            else:  # 3.1.1: the offline queue, then the retained messages of a resumed session's subscriptions
                await self._deliver_on_connect(session)

    async def close_session(self, conn: Connection) -> None:
        """The connection has ended (`protocol.MqttProtocol` calls this once): takeover's wait ends, then the
        session's Will, cleanup and the listener's slot."""
        session = conn.session
        cid = session.client_id
        assert cid is not None
        state = self._hardening()
        if state.live.get(cid) is conn:
            del state.live[cid]
        conn.set_ended()
        try:
            await self._ended(session, conn, conn.outlet, conn.goodbye, conn.will)
        finally:
            conn.server.release_connection()

    def _offline_queue(self, session: Session, outlet: Any) -> None:
        """Messages queued while the session was offline, through the outlet (expired ones are dropped)."""
        queue = session.retained_messages
        for _ in range(queue.qsize()):
            msg = queue.get_nowait()
            outlet.send(msg.topic.encode(), msg.topic, bytes(msg.data), msg.qos or 0, False, props_of(msg))

    async def _ended(self, session: Session, conn: Connection, outlet: Any,
                        disconnect: codec.Disconnect | None, will: _Will | None) -> None:
        cid = session.client_id or ""
        conn.closed = True
        if disconnect is not None:
            expiry = disconnect.props.get(codec.SESSION_EXPIRY)
            if expiry is not None:
                if session.attributes.get(SESSION_EXPIRY) == 0 and expiry:
                    log.info("%s set a Session Expiry at DISCONNECT after 0 at CONNECT: ignored [MQTT-3.14.2-2]",
                             cid)
                else:
                    expiry = min(expiry, self.limits.session_expiry_s)
                    session.attributes[SESSION_EXPIRY] = expiry
                    session.clean_session = expiry == 0
        self._close_outlet(cid, outlet)
        current = self._sessions.get(cid, (None, None))[0] is session
        with contextlib.suppress(MachineError, ValueError):
            session.transitions.disconnect()
        session.last_disconnect_time = time.time()  # amqtt floors it to the second; expiry needs better
        if will is not None and (disconnect is None or disconnect.reason == 0x04) and current:
            self._schedule_will(session, will)
        self.tell(lambda t: t.session_disconnected(session))
        if self._has_listeners(BrokerEvents.CLIENT_DISCONNECTED):
            await self.plugins_manager.fire_event(BrokerEvents.CLIENT_DISCONNECTED, client_id=cid,
                                                  client_session=session)
        if session.clean_session and current:
            session.inflight_in.clear()
            await self._del_all_subscriptions(session)
            session.attributes.pop(SUB_OPTIONS, None)

    def _schedule_will(self, session: Session, will: _Will) -> None:
        """Publish the Will now, or after min(Will Delay, Session Expiry) unless the session resumes."""
        delay = min(will.delay, session.attributes.get(SESSION_EXPIRY, 0))
        if delay <= 0:
            self._publish_will(session, will)
            return
        timer = asyncio.get_running_loop().call_later(delay, self._delayed_will, session)
        session.attributes[_WILL] = (timer, will)

    def _delayed_will(self, session: Session) -> None:
        pending = session.attributes.pop(_WILL, None)
        entry = self._sessions.get(session.client_id or "")
        if pending is None or entry is None or entry[0] is not session or session.attributes.get(REVOKED):
            return  # the session is gone (deleted, revoked, shut down): so is its Will
        self._publish_will(session, pending[1])

    def _publish_will(self, session: Session, will: _Will) -> None:
        self.publish_will(session, will.topic, will.payload, will.qos, will.retain, will.props)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
