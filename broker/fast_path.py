"""Performance layer over amqtt 0.12.1's Broker: subscription index and direct delivery."""

from __future__ import annotations

__all__ = ["FastPathMixin"]


class FastPathMixin:
    """Hot-path overrides of amqtt's Broker; each is written so it could be offered upstream."""
