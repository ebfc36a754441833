"""Where messages go: the subscription index, per-connection outlets, retained messages, routing.

Overrides of amqtt 0.12.1's Broker (each names the method it replaces, so it can be offered upstream):

* Matching: `SubscriptionIndex` finds the subscribers of a topic in O(topic levels) (`_run_broadcast`
  tested every filter); subscribe, unsubscribe and disconnect touch only the session's own filters
  (`add_subscription`, `_del_subscription`, `_del_all_subscriptions`).
* Delivery: a message goes straight into each subscriber's `Outlet` (bounded, flow-controlled), with no
  broadcast queue and no task per subscriber, at min(publisher QoS, granted QoS).
* Shared subscriptions `$share/{ShareName}/{filter}` (MQTT 5.0 §4.8.2, offered to 3.1.1 clients as Mosquitto
  and EMQX do): each matching message goes to one member per shared subscription, in turn among the
  connected members; with none connected, an offline persistent member holds a QoS>0 message for its
  return (a QoS 0 one is dropped). Retained messages are never sent on a shared subscription.
* Retained: `RetainedStore` keeps a topic tree, so a subscription finds its retained messages without a
  scan; a session gets only the retained messages of its own subscriptions, sent as one batch under the
  outlet's flow control.
* A resumed 3.1.1 session's offline queue goes through its outlet too (RETAIN 0 [MQTT-3.3.1-9], expired
  messages dropped), then the retained messages of its subscriptions that the queue did not just deliver.
* Sessions: a session amqtt's `BrokerContext.add_subscription` creates (restored at start) is the engine's
  `Session` (`create_offline_session`).
* Plugins are asked once, after they load, which hooks they offer (`broker.mqtt.hooks`); with only
  synchronous ACLs, RECEIVE checks stay synchronous, otherwise deliveries go through one ordered lane.
* MQTT 5: a message carries its properties (`MessageProps`) through delivery, retain and the offline
  queue; a subscriber holding v5 subscription options gets it per those options (`sub_options`),
  and each connection brings its own outlet (`Connection.make_outlet`), which encodes PUBLISH in its version.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from broker.mqtt.amqtt_compat import Action, BrokerEvents
from broker.mqtt.hooks import (
    AcknowledgesAfter,
    AnswersRequests,
    FiltersTopicsSync,
    InterceptsPublish,
    OwnsTopics,
    ReplyTo,
    TracksSessions,
)
from broker.mqtt.message import MessageProps, RetainedMessage, props_of
from broker.mqtt.outlet import DeliveryLimits, Outlet
from broker.mqtt.router import PluginHooks, Route, Router, RouterHost
from broker.mqtt.session import Session
from broker.mqtt.sub_options import SUB_OPTIONS
from broker.mqtt.topic_index import RetainedStore, SubscriptionIndex
from broker.mqtt.topics import shared_parts, valid_subscription

if TYPE_CHECKING:
    from broker.mqtt.amqtt_compat import Broker

    _Base: TypeAlias = Broker
else:
    _Base = object


__all__ = ["SUBACK_FAILURE", "RoutingMixin"]

log = logging.getLogger("intercom.fastpath")
_QUEUED_LAST = "intercom.queued_last"  # session attribute: topic -> last payload of the offline queue just sent
SUBACK_FAILURE = 0x80  # 3.1.1's SUBACK failure, MQTT 5's Reason.UNSPECIFIED


def _ignore_reply(intercept: Callable[[Session, str, bytes], bool | None],
                  ) -> Callable[[Session, str, bytes, ReplyTo], bool | None]:
    return lambda session, topic, payload, _reply: intercept(session, topic, payload)


class RoutingMixin(_Base):
    """Subscriptions, outlets, retained messages and routing over amqtt's Broker."""

    delivery_limits: DeliveryLimits = DeliveryLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._retained_messages: RetainedStore[RetainedMessage] = RetainedStore()
        self._index: SubscriptionIndex[Session] = SubscriptionIndex()
        self._outlets: dict[str, Outlet] = {}
        self._hooks: PluginHooks | None = None
        self._lane: deque[Route] = deque()
        self._lane_task: asyncio.Future[Any] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        # the per-message path, composed (not mixed in): it shares the index and the outlets
        self.router = Router(cast("RouterHost", self), self._index, self._outlets)
        self.dropped_closed = 0  # messages dropped by outlets that have since closed

    def _spawn(self, coro: Any) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # read by broker/ops/metrics.py at scrape time
    @property
    def messages_in(self) -> int:
        """Client publishes routed."""
        return self.router.messages_in

    @property
    def messages_out(self) -> int:
        """Deliveries due to subscribers."""
        return self.router.messages_out

    def deliver(self, source: Session | None, topic: str, data: bytes, qos: int, retain: bool = False,
                props: MessageProps | None = None) -> int:
        """`Router.deliver`: one message to every matching subscriber now; how many deliveries were due."""
        return self.router.deliver(source, topic, data, qos, retain, props)

    def queue_lane(self, route: Route) -> None:
        """A delivery that needs async RECEIVE checks: sent by the one ordered lane, in publish order."""
        self._lane.append(route)
        if self._lane_task is None or self._lane_task.done():
            self._lane_task = self._spawn(self._run_lane())

    # ---- plugin hooks ---------------------------------------------------------------------------

    def _plugin_hooks(self) -> PluginHooks:
        if self._hooks is not None:
            return self._hooks
        pm: Any = self.plugins_manager
        hooks = PluginHooks()
        barrier = ""
        for plugin in pm.plugins:
            if isinstance(plugin, InterceptsPublish):
                hooks.intercepts.append(plugin.intercept_publish)
                hooks.request_intercepts.append(plugin.intercept_request if isinstance(plugin, AnswersRequests)
                                                else _ignore_reply(plugin.intercept_publish))
            if isinstance(plugin, OwnsTopics):
                hooks.owned.append(plugin.owns_topic)
            if isinstance(plugin, TracksSessions):
                hooks.trackers.append(plugin)
            if isinstance(plugin, AcknowledgesAfter):
                if hooks.ack_barrier is not None:  # one durable store behind the broker: one barrier
                    raise RuntimeError(f"two plugins implement AcknowledgesAfter ({barrier} and "
                                       f"{type(plugin).__name__}): one broker has one PUBACK barrier")
                hooks.ack_barrier, barrier = plugin.acknowledge_after, type(plugin).__name__
        topic_plugins: list[object] = list(pm._topic_plugins)
        custom_filter = type(self)._topic_filtering is not RoutingMixin._topic_filtering_base()
        hooks.filter_topics = bool(topic_plugins) or custom_filter
        sync = [p for p in topic_plugins if isinstance(p, FiltersTopicsSync)]
        if custom_filter or len(sync) != len(topic_plugins):
            hooks.receive_async = hooks.filter_topics
        else:
            hooks.sync_checks = [p.topic_filtering_sync for p in sync]
            hooks.receive_checks = [p.topic_filtering_sync for p in sync if getattr(p, "checks_receive", True)]
        callbacks = pm._event_plugin_callbacks
        hooks.events = frozenset(str(e) for e, fns in callbacks.items() if fns)
        hooks.sync_publish = not hooks.receive_async and not (
            {str(BrokerEvents.MESSAGE_RECEIVED), str(BrokerEvents.MESSAGE_BROADCAST)} & hooks.events)
        self._hooks = hooks
        return hooks

    @staticmethod
    def _topic_filtering_base() -> Any:
        from broker.mqtt.amqtt_compat import Broker

        return Broker._topic_filtering

    def tell(self, news: Callable[[TracksSessions], None]) -> None:
        """Give `news` to every `TracksSessions` plugin now, in load order; one that fails is logged."""
        for tracker in self._plugin_hooks().trackers:
            try:
                news(tracker)
            except Exception:
                log.exception("plugin %s failed on a session event", type(tracker).__name__)

    def _has_listeners(self, event: BrokerEvents) -> bool:
        return str(event) in self._plugin_hooks().events

    # ---- sessions -------------------------------------------------------------------------------

    def create_offline_session(self, client_id: str) -> tuple[None, Session]:
        """A disconnected session for a client id amqtt's `BrokerContext.add_subscription` does not know (the
        persistence plugin restoring sessions at start): the engine's `Session`, with no connection (amqtt built
        its own `Session` and an idle protocol handler)."""
        session = Session(client_id=client_id)
        session.disconnect()
        return None, session

    # ---- outlets --------------------------------------------------------------------------------

    def _close_outlet(self, key: str, outlet: Outlet | None) -> None:
        if outlet is None:
            return
        outlet.close()
        self.dropped_closed += outlet.dropped
        if self._outlets.get(key) is outlet:
            del self._outlets[key]

    def _on_overflow(self, outlet: Outlet) -> None:
        transport = outlet.writer.transport
        if transport is not None:
            transport.abort()
        else:
            self._spawn(outlet.handler.handle_connection_closed())

    # ---- subscriptions --------------------------------------------------------------------------

    async def _allowed(self, session: Session, topic: str, action: Action) -> bool:
        """amqtt's `_topic_filtering` verdict, computed without tasks when every ACL plugin is synchronous."""
        hooks = self._plugin_hooks()
        if not hooks.filter_topics:
            return True
        if hooks.receive_async:
            return bool(await self._topic_filtering(session, topic, action))
        return all(check(session, topic, action) for check in hooks.sync_checks)

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        """amqtt's checks, then the index; a repeated SUBSCRIBE replaces the QoS [MQTT-3.8.4-3].

        A `$share/{ShareName}/{filter}` goes to the ACL whole: the ACL plugin judges the filter part
        (`plugins.acl`) and counts the subscription as one of the session's own.
        """
        topic_filter, qos = subscription
        if not valid_subscription(topic_filter):
            return SUBACK_FAILURE
        if not await self._allowed(session, topic_filter, Action.SUBSCRIBE):
            return SUBACK_FAILURE
        max_qos = self.config.get("max-qos", qos)
        qos = min(qos, max_qos if isinstance(max_qos, int) else qos)
        key = session.client_id or ""
        self._index.add(topic_filter, key, session, qos)
        return qos

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        key = session.client_id or ""
        return int(self._index.remove(a_filter, key))

    async def _del_all_subscriptions(self, session: Session) -> None:
        self._index.remove_all(session.client_id or "")

    @property
    def subscriptions(self) -> dict[str, list[tuple[Session, int]]]:
        """amqtt's view, {filter: [(session, QoS)]} (its $SYS plugin counts it), built from the index when asked:
        the index is the one record, amqtt's own `_subscriptions` stays empty."""
        out: dict[str, list[tuple[Session, int]]] = {}
        for key, filters in self._index.by_key():
            entry = self._sessions.get(key)
            if entry is not None:
                for topic_filter, qos in filters.items():
                    out.setdefault(topic_filter, []).append((entry[0], qos))
        return out

    # ---- retained -------------------------------------------------------------------------------

    async def _publish_session_retained_messages(self, session: Session) -> None:
        """A resumed 3.1.1 session's offline queue (amqtt's name for it), through the outlet: RETAIN 0, as for
        any message matching an established subscription [MQTT-3.3.1-9]; an expired one is dropped there.
        Notes what each topic's last queued message was, so the retained pass does not send it again."""
        queue = session.retained_messages
        outlet = self.router.open_outlet(session) if queue.qsize() else None
        if outlet is None:
            return
        last: dict[str, bytes] = {}
        for _ in range(queue.qsize()):
            msg = queue.get_nowait()
            data = bytes(msg.data)
            last[msg.topic] = data
            outlet.send(msg.topic.encode(), msg.topic, data, msg.qos or 0, False, props_of(msg))
        session.attributes[_QUEUED_LAST] = last

    def _publish_retained_on_connect(self, session: Session) -> None:
        """Retained messages for the subscriptions this session already holds (a resumed session), each
        once: not one the offline queue just delivered."""
        last: dict[str, bytes] = session.attributes.pop(_QUEUED_LAST, None) or {}
        for topic_filter, qos in self._index.filters_of(session.client_id or "").items():
            self._send_retained(session, topic_filter, qos, skip=last)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        """Only for a filter this session holds: amqtt's connect loop passes every client's filters."""
        topic_filter = subscription[0]
        granted = self._index.filters_of(session.client_id or "").get(topic_filter)
        if granted is not None:
            self._send_retained(session, topic_filter, granted)

    def _send_retained(self, session: Session, topic_filter: str, qos: int, sub_ids: tuple[int, ...] = (),
                       skip: dict[str, bytes] | None = None) -> int:
        """`skip`: topic -> payload the session already got (the retained message with that payload is not sent)."""
        if shared_parts(topic_filter) is not None:
            return 0  # never on a shared subscription [MQTT 5.0 §4.8.2]
        found = self._retained_messages.tree.find(topic_filter)
        if skip:
            found = [m for m in found if skip.get(m.topic) != bytes(m.data)]
        if not found:
            return 0
        outlet = self.router.open_outlet(session)
        if outlet is None:
            return 0
        outlet.send_retained(found, qos, sub_ids)
        return len(found)

    def retain_now(self, source: Session | None, topic: str, data: bytes, qos: int | None,
                   props: MessageProps | None = None) -> None:
        """amqtt's `retain_message`, synchronous: store (or clear, on an empty payload) and notify plugins."""
        message = RetainedMessage(topic, data, qos, props)
        if data:
            self._retained_messages[topic] = message
        elif self._retained_messages.pop(topic, None) is None:
            return
        self.tell(lambda t: t.retained_set(topic, message))
        if self._has_listeners(BrokerEvents.RETAINED_MESSAGE):
            self._spawn(self.plugins_manager.fire_event(BrokerEvents.RETAINED_MESSAGE, client_id=None,
                                                        retained_message=message))

    # ---- routing --------------------------------------------------------------------------------

    async def _run_lane(self) -> None:
        """Deliveries that need async RECEIVE checks, in publish order."""
        while self._lane:
            source, topic, data, qos, matches, picked, retain, props = self._lane.popleft()
            topic_b = topic.encode()
            for key, (target, sub_qos) in matches.items():
                if not await self._topic_filtering(target, topic=topic, action=Action.RECEIVE):
                    continue
                if SUB_OPTIONS in target.attributes:
                    self.router.send_v5(key, target, source, topic_b, topic, data, qos, retain, props)
                    continue
                self.router.send_to(key, target, topic_b, topic, data, min(qos, sub_qos), props)
            for key, (target, sub_qos) in picked or ():  # shared: the member's granted QoS, no v5 options
                if await self._topic_filtering(target, topic=topic, action=Action.RECEIVE):
                    self.router.send_to(key, target, topic_b, topic, data, min(qos, sub_qos), props)

    async def _broadcast_message(self, session: Session | None, topic: str | None, data: bytes | bytearray | None,
                                 force_qos: int | None = None) -> None:
        """Deliver now instead of queueing; without a QoS the subscriber's granted QoS applies (amqtt's)."""
        if topic is not None and data is not None:
            self.router.deliver(session, topic, bytes(data), 2 if force_qos is None else force_qos)

    async def _run_broadcast(self, running_tasks: Any) -> None:
        """Anything still put on amqtt's broadcast queue is routed through the index."""
        broadcast = await self._broadcast_queue.get()
        qos = broadcast.get("qos")
        await self._broadcast_message(broadcast.get("session"), broadcast.get("topic"), broadcast.get("data"), qos)
