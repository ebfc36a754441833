"""Our layer over amqtt's Broker (pinned to 0.12.1): in-process publishing and bound-port lookup.

IntercomBroker = HardeningMixin (limits, protocol checks) + ConnectMixin / PublishMixin (MQTT 5 connections)
+ SubscribeMixin (SUBSCRIBE / UNSUBSCRIBE, both versions) + Qos2Mixin (incoming QoS 2, both versions)
+ FastPathMixin (subscription index, delivery)
+ amqtt's Broker (MQTT 3.1.1). Each mixin owns distinct methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from amqtt.broker import Broker

from broker.mqtt.codec import CORRELATION_DATA
from broker.mqtt.encode import property_bytes
from broker.mqtt.handle_connect import ConnectMixin
from broker.mqtt.handle_publish import PublishMixin
from broker.mqtt.handle_qos2 import Qos2Mixin
from broker.mqtt.handle_subscribe import SubscribeMixin
from broker.mqtt.hardening import HardeningMixin
from broker.mqtt.message import MessageProps

if TYPE_CHECKING:
    from broker.mqtt.router import RouterHost

__all__ = ["IntercomBroker"]


class PublishMeta(Protocol):
    """What a server-originated message carries for MQTT 5 subscribers (the core's `group_commit.Meta`
    has this shape; the engine does not import the core)."""

    @property
    def expiry_s(self) -> int | None: ...

    @property
    def correlation(self) -> bytes | None: ...

    @property
    def valid(self) -> Callable[[], bool] | None: ...


class IntercomBroker(HardeningMixin, ConnectMixin, PublishMixin, SubscribeMixin, Qos2Mixin, Broker):
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                meta: PublishMeta | None = None) -> None:
        """Deliver a server-originated message now; synchronous and non-blocking so callers stay atomic.
        `meta`: what MQTT 5 subscribers get beside it (expiry, correlation data), and when it goes stale."""
        props = None
        if meta is not None:
            forward = property_bytes(CORRELATION_DATA, meta.correlation) if meta.correlation is not None else b""
            props = MessageProps(forward, None if meta.expiry_s is None else time.time() + meta.expiry_s, meta.valid)
        if retain:
            self.retain_now(None, topic, payload, qos, props)
        self.deliver(None, topic, payload, qos, retain, props)

    def bound_port(self, listener: str) -> int:
        server: Any = self._servers[listener].instance
        return int(next(iter(server.sockets)).getsockname()[1])


if TYPE_CHECKING:
    def _composes_a_router(broker: IntercomBroker) -> RouterHost:
        return broker  # mypy checks the broker offers what `Router` calls back for
