"""Security and limits layer over amqtt 0.12.1's Broker (issue: lock the box down).

A mixin placed before the fast-path mixin in IntercomBroker's bases.
"""

from __future__ import annotations

__all__ = ["HardeningMixin"]


class HardeningMixin:
    """Connection-level limits and protocol checks; overrides are listed in docs/security.md."""
