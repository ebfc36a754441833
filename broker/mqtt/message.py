"""The engine's messages (3.1.1 and 5), as they go through retain, the offline queue, in-flight state and persistence.

Three `__slots__` classes, each with its MQTT 5 properties (`props`, None for most 3.1.1-like traffic):
`RetainedMessage` (a retained message, or one queued for an offline session), `OutgoingMessage` (a QoS 1/2
message sent to a client and not yet acknowledged, with its subscription identifiers, so a re-send carries them
again) and `IncomingMessage` (a QoS 2 message a client published, held until its PUBREL; also what amqtt's
message events get). Each has `topic`, `data` and `qos`, the names amqtt plugins read.

`MessageProps` holds a message's properties as the publisher sent them (encoded, for unaltered
forwarding) and its expiry as a wall-clock time, so the remaining interval can be forwarded [MQTT-3.3.2-6]
and an expired message is never delivered, also after a restart.

A server-originated message may also carry `valid`, a check that says whether it still means anything
(an invite of a call that has ended does not): once it answers False the message counts as expired. It
lives in memory only; after a restart the stored expiry time alone applies.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

__all__ = ["IncomingMessage", "Message", "MessageProps", "OutgoingMessage", "RetainedMessage", "props_of"]


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


# The three message kinds: slots dataclasses (one per message held), compared by identity as amqtt's were.
@dataclass(slots=True, eq=False)
class RetainedMessage:
    """A retained message, or a message queued for an offline session (`qos` None: as published)."""

    topic: str
    data: bytes
    qos: int | None
    props: MessageProps | None = None


@dataclass(slots=True, eq=False)
class OutgoingMessage:
    """A QoS 1/2 message sent to a client and not yet acknowledged, with what a re-send needs. `released`: a QoS 2
    message past its PUBREC (only its PUBREL is re-sent)."""

    packet_id: int
    topic: str
    qos: int
    data: bytes
    retain: bool
    props: MessageProps | None = None
    sub_ids: tuple[int, ...] = ()
    released: bool = False


@dataclass(slots=True, eq=False)
class IncomingMessage:
    """A message a client published: a QoS 2 one held until its PUBREL (with its request's Response Topic and
    Correlation Data, in memory only), or the message amqtt's message events show plugins."""

    packet_id: int | None
    topic: str
    data: bytes
    retain: bool
    props: MessageProps | None = None
    reply: tuple[str, bytes | None] | None = None
    qos: int = 2


Message: TypeAlias = RetainedMessage | OutgoingMessage | IncomingMessage


def props_of(msg: object) -> MessageProps | None:
    """A message's properties; None for one without (an amqtt plugin may retain amqtt's own message class)."""
    value = getattr(msg, "props", None)
    return value if isinstance(value, MessageProps) else None
