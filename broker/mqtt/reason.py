"""The MQTT 5 reason codes (§2.4) the engine sends, one `IntEnum`, and the one rule for acknowledgements.

`ProtocolError` is what a handler raises for a client that broke the protocol; the connection turns it into
its version's ending in one place (`protocol.MqttProtocol._protocol_error`): DISCONNECT with the code then close
(MQTT 5), a plain close (3.1.1). `wrong_ack` is Mosquitto's outgoing-flow rule (`db__message_delete_outgoing`):
PUBACK only for a QoS 1 delivery, PUBREC only for QoS 2, PUBCOMP only for QoS 2 after its PUBREC.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any

__all__ = ["ProtocolError", "Reason", "wrong_ack"]


class Reason(IntEnum):
    SUCCESS = 0x00
    DISCONNECT_WITH_WILL = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    UNSPECIFIED = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_ID_NOT_VALID = 0x85
    BAD_CREDENTIALS = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_NAME_INVALID = 0x90
    PACKET_ID_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    QUOTA_EXCEEDED = 0x97
    PAYLOAD_FORMAT_INVALID = 0x99


class ProtocolError(Exception):
    """A client packet breaks the protocol; `code` is the reason to answer (or disconnect) with in MQTT 5."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# packet types (the fixed header's high nibble) of the three acknowledgements a receiver sends
_PUBACK, _PUBREC, _PUBCOMP = 4, 5, 7


def wrong_ack(inflight: Mapping[int, Any], kind: int, packet_id: int,
              released: Mapping[int, Any] | None = None) -> ProtocolError | None:
    """The error for acknowledging the outgoing message `packet_id` with packet type `kind`; None when it fits.

    `released`: packet ids of QoS 2 messages past PUBREC that a flow keeps outside `inflight` (amqtt's 3.1.1
    QoS 2 sender waits for their PUBCOMP). An unknown packet id is not judged here (each version answers it
    its own way)."""
    msg = inflight.get(packet_id)
    if msg is None:
        if released is None or packet_id not in released or kind != _PUBACK:
            return None
        qos, past_pubrec = 2, True
    else:
        qos, past_pubrec = msg.qos, msg.released
    if kind == _PUBACK:
        ok = qos == 1
    elif kind == _PUBREC:
        ok = qos == 2
    else:
        ok = kind == _PUBCOMP and qos == 2 and past_pubrec
    if ok:
        return None
    names = {_PUBACK: "PUBACK", _PUBREC: "PUBREC", _PUBCOMP: "PUBCOMP"}
    state = " before its PUBREC" if kind == _PUBCOMP and qos == 2 else ""
    return ProtocolError(Reason.PROTOCOL_ERROR,
                         f"{names.get(kind, kind)} for QoS {qos} message {packet_id}{state} [MQTT-4.3]")
