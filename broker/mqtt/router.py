"""The per-message path of the one engine, MQTT 3.1.1 and 5 alike: a PUBLISH accepted, routed, delivered and
acknowledged (Mosquitto's handle_publish.c, subs.c and the callers of send_publish.c).

`Router` is composed into the broker (`RoutingMixin.router`), not mixed into it: every connection calls it
directly (`Connection.handle`). It holds the engine's one subscription index and its outlets by reference and
calls back into the broker (`RouterHost`) only for what is rare or must await: retaining a message, amqtt's
message events, an async ACL, the ordered RECEIVE lane, QoS 2 hold. A plain, fully typed class with no amqtt
base, it is what the optional compiled build (`broker.native_build`) compiles with the rest of the hot path.

* `publish_plain`: the common PUBLISH (QoS 0/1, no properties, every ACL synchronous) without the codec's
  `Publish`; `publish_packet`: any other, decoded strictly by the codec first.
* `route`: deliver, retain, then the `InterceptsPublish` / `AnswersRequests` plugins; a topic a plugin owns
  (`OwnsTopics`) goes to that plugin only. Client publishes, QoS 2 releases and Wills all end here.
* `deliver`: every matching subscriber and one member of each matching shared subscription, now, at
  min(publisher QoS, granted QoS), straight into each subscriber's `Outlet`.
* `ack`: PUBACK / PUBREC / PUBCOMP in the connection's version, after the plugins' barrier (`AcknowledgesAfter`).
  An MQTT 5 acknowledgement carries a reason code (§3.4.2.1): 0x10 when nobody subscribes, 0x87 when the ACL
  refuses, 0x99 when the Payload Format Indicator says UTF-8 and the payload is not [MQTT-3.3.2-4].
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from broker.mqtt import codec, encode
from broker.mqtt.amqtt_compat import PUBLISH_ACTION, RECEIVE_ACTION
from broker.mqtt.codec import PUBACK, PUBREC, V5, Publish
from broker.mqtt.hooks import ReplyTo, TracksSessions
from broker.mqtt.message import MessageProps, RetainedMessage
from broker.mqtt.outlet import DeliveryLimits, Outlet
from broker.mqtt.reason import ProtocolError, Reason
from broker.mqtt.session import Session
from broker.mqtt.shared_index import HOLDS, NONE, ONLINE, Member
from broker.mqtt.sub_options import SUB_OPTIONS, delivery_for
from broker.mqtt.topic_index import SubscriptionIndex
from broker.mqtt.topics import valid_topic_name

if TYPE_CHECKING:
    from broker.mqtt.connection import Connection
    from broker.mqtt.peer import Peer

__all__ = ["PluginHooks", "Route", "Router", "RouterHost", "member_rank"]

log = logging.getLogger("intercom.fastpath")
NO_SUBSCRIBERS, NOT_AUTHORIZED = Reason.NO_MATCHING_SUBSCRIBERS, Reason.NOT_AUTHORIZED
PAYLOAD_FORMAT_INVALID = Reason.PAYLOAD_FORMAT_INVALID
# a delivery waiting in the broker's ordered lane for an async RECEIVE check (`RouterHost.queue_lane`)
Route = tuple[Session | None, str, bytes, int, dict[str, tuple[Session, int]], list[Member[Session]] | None,
              bool, MessageProps | None]


@dataclass
class PluginHooks:
    """What the loaded plugins ask of the hot path; computed once, after plugins load."""

    intercepts: list[Callable[[Session, str, bytes], bool | None]] = field(default_factory=list)
    # the same plugins, for an MQTT 5 request (a PUBLISH with a Response Topic)
    request_intercepts: list[Callable[[Session, str, bytes, ReplyTo], bool | None]] = field(default_factory=list)
    # `owns_topic(topic)`: topics a plugin publishes itself; clients' messages there only reach the interceptors
    owned: list[Callable[[str], bool]] = field(default_factory=list)
    filter_topics: bool = False  # any PUBLISH/SUBSCRIBE ACL at all
    sync_checks: list[Callable[..., bool | None]] = field(default_factory=list)
    # the ones that judge RECEIVE too (`FiltersTopicsSync.checks_receive`): asked once per delivery
    receive_checks: list[Callable[..., bool | None]] = field(default_factory=list)
    receive_async: bool = False  # some ACL has only the async `topic_filtering`
    sync_publish: bool = True  # a PUBLISH can be handled inside the reader's call, without awaiting
    events: frozenset[str] = frozenset()
    # `acknowledge_after(send)`: a plugin that made an intercepted publish's effect durable later in
    # the tick (the call service's group commit) runs `send` (the PUBACK) once it is, not before.
    ack_barrier: Callable[[Callable[[], None]], None] | None = None
    trackers: list[TracksSessions] = field(default_factory=list)  # told of sessions synchronously (`tell`)


class RouterHost(Protocol):
    """What the router asks of the broker that composes it (`engine.IntercomBroker`)."""

    _sessions: dict[str, tuple[Session, Connection | None]]
    delivery_limits: DeliveryLimits

    def _plugin_hooks(self) -> PluginHooks: ...

    def _on_overflow(self, outlet: Outlet) -> None: ...

    def retain_now(self, source: Session | None, topic: str, data: bytes, qos: int | None,
                   props: MessageProps | None = None) -> None: ...

    def queue_lane(self, route: Route) -> None: ...

    def publish_async(self, conn: Connection, pub: Publish, props: MessageProps | None) -> Awaitable[None]: ...

    def hold_qos2(self, conn: Peer, packet_id: int, topic: str, data: bytes, retain: bool, allowed: bool,
                  props: MessageProps | None = None, reply: ReplyTo | None = None) -> None: ...


def member_rank(session: Session) -> int:
    """How usable a shared-subscription member is now: connected, else able to hold QoS>0 offline (as in
    `Router.send_to`), else not at all."""
    if session.transitions.state == "connected":
        return ONLINE
    if not session.clean_session and not session.is_anonymous:
        return HOLDS
    return NONE


def reply_of(pub: Publish) -> ReplyTo | None:
    """Where a request wants its answer (§4.10), if it is one."""
    response = pub.props.get(codec.RESPONSE_TOPIC)
    return ReplyTo(response, pub.props.get(codec.CORRELATION_DATA)) if response is not None else None


class Router:
    """The per-message path (see the module docstring)."""

    __slots__ = ("_hooks", "_on_overflow", "host", "index", "messages_in", "messages_out", "outlets")

    def __init__(self, host: RouterHost, index: SubscriptionIndex[Session], outlets: dict[str, Outlet]) -> None:
        self.host = host
        self.index = index
        self.outlets = outlets
        self._hooks: PluginHooks | None = None
        self._on_overflow = host._on_overflow  # bound once: every outlet holds it (not a bound method each)
        # read by broker/ops/metrics.py at scrape time: plain ints keep the hot path cheap
        self.messages_in = 0  # client publishes routed
        self.messages_out = 0  # deliveries due to subscribers

    def hooks(self) -> PluginHooks:
        hooks = self._hooks
        if hooks is None:
            hooks = self._hooks = self.host._plugin_hooks()
        return hooks

    # ---- a client's PUBLISH ---------------------------------------------------------------------

    def publish_plain(self, conn: Connection, flags: int, body: bytes, version: int) -> bool:
        """The common PUBLISH without the codec's `Publish`: QoS 0 or 1, a topic name, (MQTT 5) an empty property
        block, every ACL synchronous (the caller checks `sync_publish`). False for anything else, which
        `codec.decode_publish` then decodes strictly (and refuses with its reason code)."""
        qos = (flags >> 1) & 3
        if qos > 1 or (flags & 0x08 and not qos):
            return False
        end = 2 + int.from_bytes(body[:2], "big")
        pos = end + 2 if qos else end  # after the packet id
        if version == V5:
            if pos >= len(body) or body[pos]:  # the property length: 0 is no properties
                return False
            start = pos + 1
        elif pos > len(body):
            return False
        else:
            start = pos
        try:
            topic = body[2:end].decode()
        except UnicodeDecodeError:
            return False
        packet_id = int.from_bytes(body[end:pos], "big")
        if not valid_topic_name(topic) or (qos and not packet_id):
            return False
        session = conn.session
        allowed = self.may_publish_now(session, topic)
        if allowed is None:
            return False
        if not allowed:
            if qos:
                self.ack(conn, PUBACK, packet_id, NOT_AUTHORIZED)
            return True
        matched = self.route(session, topic, body[start:], qos, bool(flags & 1))
        if qos:
            self.ack(conn, PUBACK, packet_id, 0 if matched else NO_SUBSCRIBERS)
        return True

    def publish_packet(self, conn: Connection, pub: Publish) -> Awaitable[None] | None:
        """Handle one decoded PUBLISH; None when done, or an awaitable when an async ACL or a plugin listening to
        message events must see it first."""
        if pub.props.get(codec.PAYLOAD_FORMAT) == 1:
            try:
                pub.payload.decode("utf-8")
            except UnicodeDecodeError:
                if not pub.qos:
                    raise ProtocolError(PAYLOAD_FORMAT_INVALID,
                                        "payload is not UTF-8 as its format indicator says") from None
                self.ack(conn, PUBACK if pub.qos == 1 else PUBREC, pub.packet_id, PAYLOAD_FORMAT_INVALID)
                return None
        props = MessageProps.received(pub.forward, pub.props.get(codec.MESSAGE_EXPIRY))
        # sync_publish: every ACL answers without awaiting and no plugin listens to message events
        allowed = self.may_publish_now(conn.session, pub.topic) if self.hooks().sync_publish else None
        if allowed is None:
            return self.host.publish_async(conn, pub, props)
        self.accept_publish(conn, pub, props, allowed)
        return None

    def accept_publish(self, conn: Connection, pub: Publish, props: MessageProps | None, allowed: bool) -> None:
        """A decoded PUBLISH the ACL judged: QoS 2 is held until PUBREL; QoS 0/1 are routed (if allowed)."""
        if pub.qos == 2:
            self.host.hold_qos2(conn, pub.packet_id, pub.topic, pub.payload, pub.retain, allowed, props,
                                reply_of(pub))
            return
        if not allowed:
            if pub.qos:
                self.ack(conn, PUBACK, pub.packet_id, NOT_AUTHORIZED)
            return
        matched = self.route(conn.session, pub.topic, pub.payload, pub.qos, pub.retain, props, reply_of(pub))
        if pub.qos:
            self.ack(conn, PUBACK, pub.packet_id, 0 if matched else NO_SUBSCRIBERS)

    def may_publish_now(self, session: Session, topic: str) -> bool | None:
        """The publish ACL's verdict without awaiting, or None when an async ACL must decide."""
        hooks = self.hooks()
        if not hooks.filter_topics:
            return True
        if hooks.receive_async:
            return None
        for check in hooks.sync_checks:  # noqa: SIM110 - all must allow; a loop, not a generator, once per PUBLISH
            if not check(session, topic, PUBLISH_ACTION):
                return False
        return True

    def ack(self, conn: Peer, ptype: int, packet_id: int, reason: int = 0) -> None:
        """PUBACK / PUBREC / PUBCOMP in the connection's version, after any durable effect the plugins staged."""
        data = encode.encode_ack(ptype, packet_id, reason, version=conn.version)
        barrier = self.hooks().ack_barrier
        if barrier is None:
            conn.write(data)
        else:
            barrier(lambda: conn.write(data))

    # ---- routing --------------------------------------------------------------------------------

    def route(self, session: Session, topic: str, data: bytes, qos: int, retain: bool,
              props: MessageProps | None = None, reply: ReplyTo | None = None) -> int:
        """The end of every accepted publish and Will (3.1.1 and 5): deliver, retain, then let interceptors (the call
        plugin) see it (with the MQTT 5 request's `reply`, if any). Returns how many subscribers matched, an
        interceptor that consumed the message (returned True) counting as one. On a topic a plugin owns
        (`OwnsTopics`: a device's status) only the interceptors see it."""
        hooks = self.hooks()
        for owns in hooks.owned:
            if owns(topic):
                matched = 1  # the owning plugin is its subscriber
                break
        else:
            matched = self.deliver(session, topic, data, qos, retain, props)
            if retain:
                self.host.retain_now(session, topic, data, qos, props)
        if reply is None:
            for intercept in hooks.intercepts:
                try:
                    matched += 1 if intercept(session, topic, data) else 0
                except Exception:
                    log.exception("intercept_publish failed on %s", topic)
            return matched
        for answer in hooks.request_intercepts:
            try:
                matched += 1 if answer(session, topic, data, reply) else 0
            except Exception:
                log.exception("intercept_request failed on %s", topic)
        return matched

    def deliver(self, source: Session | None, topic: str, data: bytes, qos: int, retain: bool = False,
                props: MessageProps | None = None) -> int:
        """Send one message to every matching subscriber, and to one member of each matching shared
        subscription, now, at min(qos, granted QoS); returns how many deliveries were due.

        `retain` is the publisher's flag (kept only by v5 subscriptions with Retain As Published)."""
        index = self.index
        matches = index.match(topic)
        # members are picked here, in publish order, even when the async lane sends later
        picked = index.pick_shared(topic, member_rank) if index.shared.count else None
        if source is not None:
            self.messages_in += 1
        if not matches and not picked:
            return 0
        due = len(matches) + (len(picked) if picked else 0)
        self.messages_out += due
        hooks = self.hooks()
        if hooks.receive_async:
            self.host.queue_lane((source, topic, data, qos, matches, picked, retain, props))
            return due
        topic_b = topic.encode()
        checks = hooks.receive_checks
        for key, (target, sub_qos) in matches.items():
            if checks and any(check(target, topic, RECEIVE_ACTION) is False for check in checks):
                continue
            # v5 options that can change the delivery (`OptionsTable.special`): `delivery_for` decides. No
            # getattr default on None: a failed lookup formats an AttributeError per delivery
            options = target.attributes.get(SUB_OPTIONS)
            if options is not None and getattr(options, "special", True):
                self.send_v5(key, target, source, topic_b, topic, data, qos, retain, props)
                continue
            self.send_to(key, target, topic_b, topic, data, qos if qos < sub_qos else sub_qos, props)
        if picked:
            for key, (target, sub_qos) in picked:
                if checks and any(check(target, topic, RECEIVE_ACTION) is False for check in checks):
                    continue
                self.send_to(key, target, topic_b, topic, data, qos if qos < sub_qos else sub_qos, props)
        return due

    def send_v5(self, key: str, target: Session, source: Session | None, topic_b: bytes, topic: str, data: bytes,
                qos: int, retain: bool, props: MessageProps | None) -> None:
        """A subscriber with MQTT 5 subscription options: No Local, Retain As Published, identifiers."""
        found = delivery_for(target.attributes[SUB_OPTIONS], topic, source is target, retain)
        if found is not None:
            granted, keep_retain, sub_ids = found
            self.send_to(key, target, topic_b, topic, data, min(qos, granted), props, keep_retain, sub_ids)

    def send_to(self, key: str, target: Session, topic_b: bytes, topic: str, data: bytes, qos: int,
                props: MessageProps | None = None, retain: bool = False, sub_ids: tuple[int, ...] = ()) -> None:
        outlet = self.outlets.get(key)
        if outlet is None or outlet.session is not target or outlet.closed:
            outlet = self.open_outlet(target) if target.transitions.state == "connected" else None
        if outlet is not None:
            outlet.send(topic_b, topic, data, qos, retain, props, sub_ids)
            return
        # offline persistent session: keep QoS>0 for its return [MQTT-3.1.2.4]
        if (target.transitions.state != "connected" and not target.clean_session and qos
                and not target.is_anonymous
                and target.retained_messages.qsize() < self.host.delivery_limits.max_queued):
            target.offline_queue().put_nowait(RetainedMessage(topic, data, qos, props))

    def open_outlet(self, session: Session) -> Outlet | None:
        """The session's outlet on its current connection, made on first use; None for a session with no
        connection."""
        key = session.client_id or ""
        outlet = self.outlets.get(key)
        entry = self.host._sessions.get(key)
        if entry is None or entry[0] is not session:
            return None
        handler = entry[1]
        if handler is None:  # an offline session (`create_offline_session`): no connection yet
            return None
        if outlet is not None and outlet.handler is handler and not outlet.closed:
            return outlet
        outlet = handler.make_outlet(session, handler.writer, self.host.delivery_limits, self._on_overflow)
        self.outlets[key] = outlet
        return outlet
