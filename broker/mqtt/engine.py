"""Our layer over amqtt's Broker (pinned to 0.12.1): in-process publishing and bound-port lookup.

IntercomBroker = HardeningMixin (limits, protocol checks) + V5Mixin / V5InboundMixin (MQTT 5 connections)
+ FastPathMixin (subscription index, delivery) + amqtt's Broker (MQTT 3.1.1). Each mixin owns distinct methods.
"""

from __future__ import annotations

from typing import Any

from amqtt.broker import Broker

from broker.mqtt.fast_path import FastPathMixin
from broker.mqtt.hardening import HardeningMixin
from broker.mqtt.v5.inbound import V5InboundMixin
from broker.mqtt.v5.serve import V5Mixin

__all__ = ["IntercomBroker"]


class IntercomBroker(HardeningMixin, V5Mixin, V5InboundMixin, FastPathMixin, Broker):
    # Both mixins define it (HardeningMixin: amqtt's behaviour, for use without the fast path): say which wins.
    _deliver_on_connect = FastPathMixin._deliver_on_connect

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Deliver a server-originated message now; synchronous and non-blocking so callers stay atomic."""
        if retain:
            self.retain_now(None, topic, payload, qos)
        self.deliver(None, topic, payload, qos)

    def bound_port(self, listener: str) -> int:
        server: Any = self._servers[listener].instance
        return int(next(iter(server.sockets)).getsockname()[1])
