"""The engine's own amqtt `Session`, and the 3.1.1 CONNECT that builds one: cheap per connection, amqtt untouched.

amqtt 0.12.1's `Session.__init__` builds a `transitions.Machine` (~1.5 ms of CPU and ~23 KB each, most of the cost
of a connection) and two `asyncio.Queue`s (four deques each) that stay empty on this broker. `EngineSession` is
a `Session` subclass that sets the same attributes itself: a plain `state` field with the machine's three states
and transitions, and `LazyQueue`s. Every session the engine creates is one (3.1.1 in `session_from_connect`,
MQTT 5 in `v5.serve`); amqtt's own `Session` class and modules stay as shipped
(`tests/mqtt/test_amqtt_compat.py` checks both).
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.errors import MQTTError
from amqtt.events import MQTTEvents
from amqtt.mqtt.connack import BAD_USERNAME_PASSWORD, IDENTIFIER_REJECTED, UNACCEPTABLE_PROTOCOL_VERSION, ConnackPacket
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import ApplicationMessage, IncomingApplicationMessage, OutgoingApplicationMessage, Session
from transitions import MachineError

from broker.mqtt.lazy import LazyQueue

__all__ = ["EngineSession", "session_from_connect"]

_MQTT_311 = 4


class EngineSession(Session):
    """amqtt's `Session` without a `transitions.Machine`: `transitions` is the session itself, whose `state`
    goes new -> connected <-> disconnected as in amqtt's `Session._init_states` (raising `MachineError` where
    the machine would, calling the same enter callbacks), and whose queues allocate on first use."""

    # Session.__init__'s attributes, set here instead of calling it (it builds the Machine and real queues)
    def __init__(self) -> None:
        self.state = "new"
        self.remote_address: str | None = None
        self.remote_port: int | None = None
        self.client_id: str | None = None
        self.clean_session: bool | None = None
        self.will_flag: bool = False
        self.will_message: bytes | bytearray | None = None
        self.will_qos: int | None = None
        self.will_retain: bool | None = None
        self.will_topic: str | None = None
        self.keep_alive: int = 0
        self.publish_retry_delay: int = 0
        self.broker_uri: str | None = None
        self.username: str | None = None
        self.password: str | None = None
        self.cafile: str | None = None
        self.capath: str | None = None
        self.cadata: bytes | None = None
        self._packet_id: int = 0
        self.parent: int = 0
        self.last_connect_time: int | None = None
        self.ssl_object: ssl.SSLObject | None = None
        self.last_disconnect_time: int | None = None
        self.attributes: dict[str, Any] = {}
        self.inflight_out: OrderedDict[int, OutgoingApplicationMessage] = OrderedDict()
        self.inflight_in: OrderedDict[int, IncomingApplicationMessage] = OrderedDict()
        self.retained_messages: LazyQueue[ApplicationMessage] = LazyQueue()
        self.delivered_message_queue: LazyQueue[ApplicationMessage] = LazyQueue()
        self.is_anonymous: bool = False

    # amqtt and the engine drive a session through `session.transitions`: answer it here, no object per session
    @property
    def transitions(self) -> EngineSession:
        return self

    def connect(self) -> bool:
        if self.state == "connected":
            raise MachineError(f"Can't trigger event connect from state {self.state}!")
        self.state = "connected"
        self._on_enter_connected()
        return True

    def disconnect(self) -> bool:
        self.state = "disconnected"  # from new, connected and disconnected alike, as amqtt's table says
        self._on_enter_disconnected()
        return True

    def is_new(self) -> bool:
        return self.state == "new"

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.retained_messages = LazyQueue()
        self.delivered_message_queue = LazyQueue()


async def session_from_connect(handler_class: type[BrokerProtocolHandler], reader: ReaderAdapter,
                               writer: WriterAdapter, plugins_manager: Any) -> tuple[BrokerProtocolHandler,
                                                                                     EngineSession]:
    """amqtt 0.12.1's `BrokerProtocolHandler.init_from_connect` (same checks, CONNACKs and errors), building an
    `EngineSession` instead of amqtt's `Session`."""
    connect = await ConnectPacket.from_stream(reader)
    await plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=connect)
    if connect.variable_header is None or connect.payload is None:
        raise MQTTError("CONNECT packet: variable header or payload not initialized.")
    if connect.payload.client_id is None:
        raise MQTTError("[[MQTT-3.1.3-3]] : Client identifier must be present")
    if connect.variable_header.will_flag and (connect.payload.will_topic is None
                                              or connect.payload.will_message is None):
        raise MQTTError("Will flag set, but will topic/message not present in payload")
    if connect.variable_header.reserved_flag:
        raise MQTTError("[MQTT-3.1.2-3] CONNECT reserved flag must be set to 0")
    if connect.proto_name != "MQTT":
        raise MQTTError(f'[MQTT-3.1.2-1] Incorrect protocol name: "{connect.proto_name}"')
    remote_address: str | None = None
    remote_port: int | None = None
    remote_info = writer.get_peer_info()
    if remote_info is not None:
        remote_address, remote_port = remote_info
        code: int | None = None
        if connect.proto_level != _MQTT_311:
            code = UNACCEPTABLE_PROTOCOL_VERSION
        elif (not connect.username_flag and connect.password_flag) or (
                connect.username_flag and connect.username is None) or (
                connect.password_flag and connect.password is None):
            code = BAD_USERNAME_PASSWORD  # [MQTT-3.1.2-22]
        elif connect.clean_session_flag is False and connect.payload.client_id_is_random:
            code = IDENTIFIER_REJECTED  # [MQTT-3.1.3-8] [MQTT-3.1.3-9]
        if code is not None:
            connack = ConnackPacket.build(0, code)  # [MQTT-3.2.2-4] session_parent=0
            await plugins_manager.fire_event(MQTTEvents.PACKET_SENT, packet=connack)
            await connack.to_stream(writer)
            await writer.close()
            raise MQTTError(f"CONNECT from {remote_address}:{remote_port} refused with return code {code}")
    session = EngineSession()
    session.client_id = connect.client_id
    session.clean_session = connect.clean_session_flag
    session.will_flag = connect.will_flag
    session.will_retain = connect.will_retain_flag
    session.will_qos = connect.will_qos
    session.will_topic = connect.will_topic
    session.will_message = connect.will_message
    session.username = connect.username
    session.password = connect.password
    session.remote_address = remote_address
    session.remote_port = remote_port
    session.ssl_object = writer.get_ssl_info()
    session.keep_alive = max(connect.keep_alive, 0)
    return handler_class(plugins_manager), session
