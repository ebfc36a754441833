"""SUBSCRIBE and UNSUBSCRIBE, one handler each for MQTT 3.1.1 and 5 (Mosquitto's handle_subscribe.c /
handle_unsubscribe.c).

Both versions arrive decoded by the one codec (`codec.decode_subscribe` / `decode_unsubscribe`) from a
connection that says which version it speaks (`Peer.version`) and writes bytes (`Peer.write`):
`connection.Connection`, which reads both versions. Each filter
goes through the engine's `add_subscription` (validity, ACL, index, shared subscriptions). Where the wire
differs, and only there, the version decides:

* the acknowledgement: SUBACK 0/1/2/0x80 and an UNSUBACK without payload in 3.1.1, reason codes in 5
  (`encode`);
* MQTT 5 subscription options (No Local, Retain As Published, Retain Handling, Subscription Identifier) are
  kept per filter in `session.attributes[SUB_OPTIONS]`; a 3.1.1 subscription has none (Retain Handling 0:
  retained messages on every SUBSCRIBE), so its sessions keep delivery's plain path (`routing`).

amqtt's `on_broker_client_subscribed` / `_unsubscribed` fire for both, with the granted QoS.
"""

from __future__ import annotations

from broker.mqtt import encode
from broker.mqtt.amqtt_compat import BrokerEvents
from broker.mqtt.codec import V5, Subscribe
from broker.mqtt.hooks import SUB_OPTIONS
from broker.mqtt.peer import Peer
from broker.mqtt.reason import Reason
from broker.mqtt.routing import RoutingMixin
from broker.mqtt.sub_options import OptionsTable, SubOptions
from broker.mqtt.topics import is_shared

__all__ = ["SubscribeMixin"]

_FAILED = Reason.UNSPECIFIED  # any granted code at or above it is a refusal (3.1.1: 0x80)


class SubscribeMixin(RoutingMixin):
    """SUBSCRIBE / UNSUBSCRIBE of every connection; see the module docstring."""

    async def subscribe(self, conn: Peer, sub: Subscribe) -> None:
        session = conn.session
        v5 = conn.version == V5
        options: dict[str, SubOptions] = {}
        if v5:  # counted (OptionsTable): with no option that changes a delivery, routing takes the plain path
            table: OptionsTable | None = session.attributes.get(SUB_OPTIONS)
            if table is None:
                table = session.attributes[SUB_OPTIONS] = OptionsTable()
            options = table
        codes: list[int] = []
        fresh: list[bool] = []
        for s in sub.subscriptions:
            fresh.append(s.topic_filter not in options)
            granted = await self.add_subscription((s.topic_filter, s.qos), session)
            if v5 and granted < _FAILED:
                options[s.topic_filter] = SubOptions(granted, s.no_local, s.retain_as_published, s.retain_handling,
                                                     sub.subscription_id)
            codes.append(granted)
        conn.write(encode.encode_suback(sub.packet_id, codes, version=conn.version))
        ids = (sub.subscription_id,) if sub.subscription_id is not None else ()
        for s, code, new in zip(sub.subscriptions, codes, fresh, strict=True):
            if code >= _FAILED:
                continue
            self.tell(lambda t: t.session_subscribed(session, s.topic_filter, code))  # noqa: B023 - called now
            if self._has_listeners(BrokerEvents.CLIENT_SUBSCRIBED):
                await self.plugins_manager.fire_event(BrokerEvents.CLIENT_SUBSCRIBED, client_id=session.client_id,
                                                      topic=s.topic_filter, qos=code)
            # Retain Handling (§3.8.3.1); never for a shared subscription (`_send_retained` checks)
            if not is_shared(s.topic_filter) and (s.retain_handling == 0 or (s.retain_handling == 1 and new)):
                self._send_retained(session, s.topic_filter, code, ids)

    async def unsubscribe(self, conn: Peer, packet_id: int, filters: list[str]) -> None:
        session = conn.session
        options: dict[str, SubOptions] = session.attributes.get(SUB_OPTIONS, {})
        codes: list[int] = []
        for topic_filter in filters:
            removed = self._del_subscription(topic_filter, session)
            options.pop(topic_filter, None)
            codes.append(Reason.SUCCESS if removed else Reason.NO_SUBSCRIPTION_EXISTED)
            self.tell(lambda t: t.session_unsubscribed(session, topic_filter))  # noqa: B023 - called now
            if self._has_listeners(BrokerEvents.CLIENT_UNSUBSCRIBED):
                await self.plugins_manager.fire_event(BrokerEvents.CLIENT_UNSUBSCRIBED, client_id=session.client_id,
                                                      topic=topic_filter)
        conn.write(encode.encode_unsuback(packet_id, codes, version=conn.version))
