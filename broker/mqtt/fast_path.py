"""What comes in on a connection: the reader's packets, handled in place, and the connection's life.

Overrides of amqtt 0.12.1's Broker (each names the method it replaces, so it can be offered upstream):

* Reading: for readers that hand out whole packets (HardeningMixin's GuardedReader), `FastHandler`
  replaces amqtt's `_reader_loop`: PUBLISH, PUBACK and PUBREL are decoded from bytes and handled inside
  the reader's call, with no task per packet; other packets take amqtt's path.
* A PUBLISH is checked against the ACL, routed (`RoutingMixin`), retained, shown to `InterceptsPublish`
  plugins, then acknowledged (after the plugins' durable effect: `AcknowledgesAfter`).
* Incoming QoS 2 is `handle_qos2.Qos2Mixin`'s (one flow for 3.1.1 and 5), SUBSCRIBE and UNSUBSCRIBE
  `handle_subscribe.SubscribeMixin`'s.
* Connections: TCP_NODELAY on every socket; `_client_message_loop` waits for the disconnect instead of
  amqtt's four waiters; a clean session's subscriptions end with its connection [MQTT-3.1.2-6].
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from amqtt.contexts import Action
from amqtt.events import BrokerEvents
from amqtt.mqtt.constants import QOS_2
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.session import IncomingApplicationMessage, Session

from broker.config import LimitsConfig
from broker.limiter import LogThrottle
from broker.mqtt import amqtt_compat
from broker.mqtt.fast_handler import FastHandler, _done, whole_packets
from broker.mqtt.hooks import ReplyTo
from broker.mqtt.outlet import unwrapped
from broker.mqtt.quota import HELD
from broker.mqtt.reason import ProtocolError
from broker.mqtt.routing import PluginHooks, RoutingMixin
from broker.mqtt.session_persistence import DurableIncoming
from broker.mqtt.topics import valid_topic_name
from broker.mqtt.v5.message import MessageProps

if TYPE_CHECKING:
    from amqtt.broker import Broker
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

    _Base: TypeAlias = Broker
else:
    _Base = object


__all__ = ["FastPathMixin"]

class _SessionTable(dict[str, tuple[Session, "BrokerProtocolHandler"]]):
    """amqtt's `_sessions`; registering a (session, handler) pair also prepares the handler."""

    def __init__(self, on_register: Callable[[BrokerProtocolHandler, Session], None]) -> None:
        super().__init__()
        self._on_register = on_register

    def __setitem__(self, client_id: str, entry: tuple[Session, BrokerProtocolHandler]) -> None:
        super().__setitem__(client_id, entry)
        self._on_register(entry[1], entry[0])

log = logging.getLogger("intercom.fastpath")
_quiet = LogThrottle()


def over_held_quota(session: Session, nbytes: int) -> bool:
    """Whether holding `nbytes` more QoS 2 would pass the principal's `limits.max_held_bytes_per_principal`
    (counted for persistent sessions: what a clean one holds ends with its connection)."""
    held = session.inflight_in
    if isinstance(held, DurableIncoming) and not held.fits(nbytes):
        _quiet.log(log, logging.WARNING, f"held {held.quota.principal}",
                   "not holding a QoS 2 message of %r: %r holds %d bytes awaiting PUBREL "
                   "(limits.max_held_bytes_per_principal)", session.client_id, held.quota.principal,
                   held.quota.quotas.used(held.quota.principal, HELD))
        return True
    return False


class FastPathMixin(RoutingMixin):
    """Connections and their inbound packets over amqtt's Broker; routing is `RoutingMixin`'s."""

    limits: LimitsConfig = LimitsConfig()  # `max_inflight_messages` bounds the incoming QoS 2 window
    handler_class: type[BrokerProtocolHandler] = FastHandler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        amqtt_compat.require_installed()
        super().__init__(*args, **kwargs)
        sessions: dict[str, tuple[Session, BrokerProtocolHandler]] = _SessionTable(self._prepare_handler)
        self._sessions = sessions

    # ---- connections ----------------------------------------------------------------------------

    async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               listener_name: str) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await super().stream_connected(reader, writer, listener_name)

    def _prepare_handler(self, handler: BrokerProtocolHandler, session: Session) -> None:
        """Hook for `_handle_client_session`, after `handler.attach()` and before `handler.start()`.

        Routes the handler's packets to this broker (`FastHandler.routed`), and switches on its
        whole-packet reader (`FastHandler.fast_reader`), the latter only for readers
        that hand out whole packets (HardeningMixin's GuardedReader, or any reader with
        `whole_packets = True`), so no read ever waits in the middle of a packet. `_SessionTable`
        calls it when amqtt (or HardeningMixin) registers the connection in `_sessions`, which both
        do between `attach()` and `start()`.
        """
        if not isinstance(handler, FastHandler) or handler._reader_task is not None:
            return
        # before start(): a SUBSCRIBE may be read before `_client_message_loop` runs
        handler.routed = self
        if whole_packets(handler.reader):
            handler.fast_reader = self

    async def _deliver_on_connect(self, session: Session) -> None:
        """Offline queue, then retained messages of this session's own subscriptions only.

        Replaces amqtt's `for topic in self._subscriptions: _publish_retained_messages_for_subscription(...)`
        in `_handle_client_session`, which is O(all filters) per connect and leaked other clients'
        retained messages; HardeningMixin's `_handle_client_session` calls this hook.
        """
        await self._publish_session_retained_messages(session)
        self._publish_retained_on_connect(session)

    async def _client_message_loop(self, client_session: Session, handler: BrokerProtocolHandler) -> None:
        """Replace amqtt's four-waiter loop: packets are handled in the reader's task; wait for disconnect."""
        if not isinstance(handler, FastHandler):
            raise TypeError("FastPathMixin serves connections whose handler is a FastHandler (handler_class)")
        h: Any = handler
        outlet = self._open_outlet(client_session)
        try:
            await self._drain_delivered(client_session, handler)
            waiter = h._disconnect_waiter
            result = await waiter if waiter is not None else None
            if not isinstance(result, DisconnectPacket) and client_session.will_flag and client_session.will_topic:
                # published here, as a PUBLISH would be; amqtt's _handle_disconnect then finds no Will to send
                self.publish_will(client_session, client_session.will_topic, bytes(client_session.will_message or b""),
                                  client_session.will_qos or 0, bool(client_session.will_retain))
                client_session.will_flag = False
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(result)
            await self._handle_disconnect(client_session, handler, done)
        except asyncio.CancelledError:
            log.debug("client loop cancelled")
        finally:
            key = client_session.client_id or ""
            self._close_outlet(key, outlet)
            for message in client_session.inflight_out.values():
                if message.publish_packet is None:  # sent by an Outlet: mark it so a retry sets DUP
                    message.publish_packet = message.build_publish_packet()
            if client_session.clean_session:
                client_session.inflight_in.clear()  # a clean session's held QoS 2 messages end with it
            if client_session.clean_session and self._sessions.get(key, (None, None))[0] is client_session:
                # a clean session's subscriptions end with the connection [MQTT-3.1.2-6]; amqtt left
                # them matching until its once-a-second session monitor ran
                await self._del_all_subscriptions(client_session)

    # ---- inbound packets ------------------------------------------------------------------------

    def _publish_now(self, session: Session, handler: BrokerProtocolHandler, packet: PublishPacket) -> Any:
        """amqtt's reader calls this for each PUBLISH and runs the returned coroutine as a task.

        When no plugin needs an await, the whole job (ACL, routing, retain, intercept, PUBACK) is done
        here, inside the reader's loop step, so a burst of packets read together is routed together
        and the subscribers' writes coalesce; the task then has nothing left to do.
        """
        qos = packet.qos or 0
        if qos == QOS_2 or not self._plugin_hooks().sync_publish:
            return self._on_publish_packet(session, handler, packet)
        topic = packet.topic_name
        data = packet.data
        if topic is None or data is None:
            return _done()
        if not self._accept_now(session, handler, topic, data, qos, packet.retain_flag):
            return _done()
        if qos and packet.variable_header is not None:
            self.puback(handler, packet.variable_header.packet_id)
        return _done()

    def puback(self, handler: BrokerProtocolHandler, packet_id: int, first: int = 0x40) -> None:
        """Acknowledge a QoS 1 PUBLISH (or, with `first` 0x70, a QoS 2 PUBREL with PUBCOMP) after any durable
        effect it had (see `PluginHooks.ack_barrier`)."""
        writer = handler.writer
        if writer is None:
            return
        packet = bytes((first, 2)) + packet_id.to_bytes(2, "big")
        barrier = self._plugin_hooks().ack_barrier
        if barrier is None:
            writer.write(packet)
            return
        stream = unwrapped(writer)

        def send() -> None:
            # The writer may have been wrapped meanwhile (the outlet opens when the client loop starts, and a
            # PUBLISH read right after CONNACK is handled before that): write through the current writer while
            # it is still this connection's, never after the connection (or a takeover) replaced it.
            current = handler.writer
            if current is not None and unwrapped(current) is stream:
                current.write(packet)

        barrier(send)

    def _accept_now(self, session: Session, handler: BrokerProtocolHandler, topic: str, data: bytes, qos: int,
                    retain: bool) -> bool:
        """`_accept_publish` without awaits (only when every ACL is synchronous and no event listens)."""
        if not valid_topic_name(topic):
            _quiet.log(log, logging.WARNING, f"topic {session.remote_address}",
                       "[MQTT-3.3.2-2] %r published on invalid topic %r: closing", session.client_id, topic)
            self._spawn(handler.handle_connection_closed())
            return False
        hooks = self._plugin_hooks()
        if hooks.filter_topics and not all(check(session, topic, Action.PUBLISH) for check in hooks.sync_checks):
            return True
        self._route(session, topic, data, qos, retain, hooks)
        return True

    def _route(self, session: Session, topic: str, data: bytes, qos: int, retain: bool, hooks: PluginHooks,
               props: MessageProps | None = None, reply: ReplyTo | None = None) -> int:
        """The end of every accepted publish and Will (3.1.1 and 5): deliver, retain, then let interceptors (the call
        plugin) see it (with the MQTT 5 request's `reply`, if any). Returns how many subscribers matched, an
        interceptor that consumed the message (returned True) counting as one. On a topic a plugin owns
        (`OwnsTopics`: a device's status) only the interceptors see it."""
        for owns in hooks.owned:
            if owns(topic):
                matched = 1  # the owning plugin is its subscriber
                break
        else:
            matched = self.deliver(session, topic, data, qos, retain, props)
            if retain:
                self.retain_now(session, topic, data, qos, props)
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

    def publish_will(self, session: Session, topic: str, payload: bytes, qos: int, retain: bool,
                     props: MessageProps | None = None) -> None:
        """A Will (3.1.1 or 5) is published like the client's own PUBLISH: same routing, retain and interceptors
        (so it obeys the same rules on the topics a plugin owns)."""
        self._route(session, topic, payload, qos, retain, self._plugin_hooks(), props)

    def _puback_now(self, session: Session, handler: BrokerProtocolHandler, packet: Any) -> Any:
        """PUBACK handled inside the reader's call, like `_publish_now`."""
        self._acked(session, handler, packet.variable_header.packet_id, packet)
        return _done()

    def _acked(self, session: Session, handler: BrokerProtocolHandler, packet_id: int, packet: Any) -> None:
        h: Any = handler
        waiter = h._puback_waiters.get(packet_id)
        if waiter is not None:  # a message amqtt itself sent with mqtt_publish
            if not waiter.done():
                waiter.set_result(packet if packet is not None else PubackPacket.build(packet_id))
            return
        outlet = self._outlets.get(session.client_id or "")
        if outlet is not None and outlet.session is session:
            outlet.acked(packet_id, packet if packet is not None else True)
        else:
            session.inflight_out.pop(packet_id, None)

    async def _on_publish_packet(self, session: Session, handler: BrokerProtocolHandler,
                                 packet: PublishPacket) -> None:
        topic = packet.topic_name
        data = packet.data
        if topic is None or data is None:
            return
        qos = packet.qos or 0
        if qos == QOS_2:
            packet_id = packet.variable_header.packet_id if packet.variable_header is not None else 0
            allowed = await self._allowed(session, topic, Action.PUBLISH)
            broker: Any = self
            try:
                broker.hold_qos2(handler, packet_id, topic, data, packet.retain_flag, allowed)
            except ProtocolError:
                self._spawn(handler.handle_connection_closed())
            return
        keep = await self._accept_publish(session, handler, topic, data, qos, packet.retain_flag, packet)
        if qos and keep and packet.variable_header is not None:
            self.puback(handler, packet.variable_header.packet_id)

    async def _drain_delivered(self, session: Session, handler: BrokerProtocolHandler) -> None:
        queue = session.delivered_message_queue
        for _ in range(queue.qsize()):
            msg = queue.get_nowait()
            await self._accept_publish(session, handler, msg.topic, bytes(msg.data), msg.qos or 0, msg.retain,
                                       msg.publish_packet)

    async def _accept_publish(self, session: Session, handler: BrokerProtocolHandler, topic: str, data: bytes,
                              qos: int, retain: bool, packet: PublishPacket | None) -> bool:
        """amqtt's `_handle_message_delivery` without the queues; False when the connection must close."""
        hooks = self._plugin_hooks()
        message = await self.message_received_event(session, topic, data, qos, retain, packet)
        if not valid_topic_name(topic):
            # $-topics are routed: the index never matches them against a leading `+` or `#`
            # [MQTT-4.7.2-1], and the ACL decides who may publish there (amqtt closed the connection)
            _quiet.log(log, logging.WARNING, f"topic {session.remote_address}",
                       "[MQTT-3.3.2-2] %r published on invalid topic %r: closing", session.client_id, topic)
            self._spawn(handler.handle_connection_closed())
            return False
        if not await self._allowed(session, topic, Action.PUBLISH):
            return True
        await self.message_broadcast_event(session, message)
        self._route(session, topic, data, qos, retain, hooks)
        return True

    async def message_received_event(self, session: Session, topic: str, data: bytes, qos: int, retain: bool,
                                     packet: PublishPacket | None = None) -> IncomingApplicationMessage | None:
        """amqtt's `on_broker_message_received` for a client's publish (3.1.1 or 5); the message the plugins saw,
        for `message_broadcast_event`, or None when no plugin listens to message events."""
        if not self._plugin_hooks().events:
            return None
        message = IncomingApplicationMessage(None, topic, qos, data, retain)
        message.publish_packet = packet
        if self._has_listeners(BrokerEvents.MESSAGE_RECEIVED):
            await self.plugins_manager.fire_event(BrokerEvents.MESSAGE_RECEIVED, client_id=session.client_id,
                                                  message=message)
        return message

    async def message_broadcast_event(self, session: Session, message: IncomingApplicationMessage | None) -> None:
        """amqtt's `on_broker_message_broadcast` for a publish the ACL allowed, before it is routed."""
        if message is not None and self._has_listeners(BrokerEvents.MESSAGE_BROADCAST):
            await self.plugins_manager.fire_event(BrokerEvents.MESSAGE_BROADCAST, client_id=session.client_id,
                                                  message=message)

    # ---- inbound QoS 2 ---------------------------------------------------------------------------

    def may_publish_now(self, session: Session, topic: str) -> bool | None:
        """The publish ACL's verdict without awaiting, or None when an async ACL must decide."""
        hooks = self._plugin_hooks()
        if not hooks.filter_topics:
            return True
        if hooks.receive_async:
            return None
        return all(check(session, topic, Action.PUBLISH) for check in hooks.sync_checks)
