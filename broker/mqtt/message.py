"""What an MQTT 5 message carries through routing, retain, the offline queue and persistence.

`MessageProps` holds a message's properties as the publisher sent them (encoded, for unaltered
forwarding) and its expiry as a wall-clock time, so the remaining interval can be forwarded [MQTT-3.3.2-6]
and an expired message is never delivered, also after a restart. amqtt's message classes have
`__slots__`; the `V5*` subclasses add the properties (and, for an outgoing message, its subscription
identifiers, so a re-send carries them again).

A server-originated message may also carry `valid`, a check that says whether it still means anything
(an invite of a call that has ended does not): once it answers False the message counts as expired. It
lives in memory only; after a restart the stored expiry time alone applies.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable

from amqtt.broker import RetainedApplicationMessage
from amqtt.session import ApplicationMessage, IncomingApplicationMessage, OutgoingApplicationMessage, Session

__all__ = ["IncomingMessage", "MessageProps", "OutgoingMessage", "RetainedMessage", "props_of"]


class MessageProps:
    """A message's forwarded properties (encoded) and expiry (time.time() based, or None)."""

    __slots__ = ("expires_at", "forward", "valid")

    def __init__(self, forward: bytes = b"", expires_at: float | None = None,
                 valid: Callable[[], bool] | None = None) -> None:
        self.forward = forward
        self.expires_at = expires_at
        self.valid = valid

    @classmethod
    def received(cls, forward: bytes, expiry_s: int | None, now: float | None = None) -> MessageProps | None:
        """The properties of a message just received; None when it has none (most 3.1.1-like traffic)."""
        if not forward and expiry_s is None:
            return None
        return cls(forward, None if expiry_s is None else (time.time() if now is None else now) + expiry_s)

    def remaining(self, now: float) -> int | None:
        """Whole seconds left (at least 1 while not expired), 0 once expired, None without an expiry."""
        if self.valid is not None and not self.valid():
            return 0
        if self.expires_at is None:
            return None
        left = self.expires_at - now
        return max(0, math.ceil(left)) if left > 0 else 0

    def expired(self, now: float) -> bool:
        return (self.expires_at is not None and self.expires_at <= now) or (
            self.valid is not None and not self.valid())

    def dump(self) -> bytes:
        """Serialised for the session store: expiry (NaN = none) then the encoded properties."""
        return struct.pack("!d", math.nan if self.expires_at is None else self.expires_at) + self.forward

    @classmethod
    def load(cls, blob: bytes | None) -> MessageProps | None:
        if not blob or len(blob) < 8:
            return None
        (at,) = struct.unpack("!d", blob[:8])
        return cls(bytes(blob[8:]), None if math.isnan(at) else at)


def props_of(msg: ApplicationMessage) -> MessageProps | None:
    value = getattr(msg, "props", None)
    return value if isinstance(value, MessageProps) else None


class RetainedMessage(RetainedApplicationMessage):
    """A retained (or offline-queued) message with its properties."""

    __slots__ = ("props",)

    def __init__(self, source: Session | None, topic: str, data: bytes, qos: int | None,
                 props: MessageProps | None) -> None:
        super().__init__(source, topic, data, qos)
        self.props = props


class OutgoingMessage(OutgoingApplicationMessage):
    """A QoS 1/2 message sent to a client and not yet acknowledged, with what a re-send needs."""

    __slots__ = ("props", "sub_ids")

    def __init__(self, packet_id: int, topic: str, qos: int, data: bytes, retain: bool,
                 props: MessageProps | None, sub_ids: tuple[int, ...] = ()) -> None:
        super().__init__(packet_id, topic, qos, data, retain)
        self.props = props
        self.sub_ids = sub_ids


class IncomingMessage(IncomingApplicationMessage):
    """A QoS 2 message a v5 client published, held until its PUBREL (with its request's Response Topic and
    Correlation Data, in memory only)."""

    __slots__ = ("props", "reply")

    def __init__(self, packet_id: int, topic: str, data: bytes, retain: bool, props: MessageProps | None,
                 reply: tuple[str, bytes | None] | None = None) -> None:
        super().__init__(packet_id, topic, 2, data, retain)
        self.props = props
        self.reply = reply
