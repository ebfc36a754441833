"""The engine's own amqtt `Session`: cheap per connection, amqtt untouched.

amqtt 0.12.1's `Session.__init__` builds a `transitions.Machine` (~1.5 ms of CPU and ~23 KB each, most of the cost
of a connection) and two `asyncio.Queue`s (four deques each) that stay empty on this broker. `EngineSession` is
a `Session` subclass that sets the same attributes itself: a plain `state` field with the machine's three states
and transitions, and `LazyQueue`s. Every session the engine creates is one (3.1.1 and MQTT 5 in
`handle_connect`); amqtt's own `Session` class and modules stay as shipped
(`tests/mqtt/test_amqtt_compat.py` checks both).
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from typing import Any

from amqtt.session import ApplicationMessage, IncomingApplicationMessage, OutgoingApplicationMessage, Session
from transitions import MachineError

from broker.mqtt.lazy import LazyQueue

__all__ = ["EngineSession"]



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
