"""The intercom's uses of MQTT 5, end to end with paho-mqtt 2 (`protocol=MQTTv5`) against the real server.

Invites carry Message Expiry = the ring time, so an invite queued for an offline phone is never delivered
after the call ended; a v5 `calls/request` with Response Topic + Correlation Data is answered there; No Local
keeps a party's own control messages from echoing back; v5 works over WebSocket too, and a 3.1.1 client
beside it sees plain 3.1.1.
"""

from __future__ import annotations

import asyncio
import json
import queue
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions


class V5:
    """A paho-mqtt 2 MQTT 5 client on its own network thread; received messages land in a queue."""

    def __init__(self, port: int, client_id: str, expiry: int | None = None, clean_start: bool = True,
                 transport: str = "tcp") -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[tuple[Any, Any, Any]] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                  transport=transport)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_connect = lambda _c, _u, flags, rc, props: self.connack.put((flags, rc, props))
        props = None
        if expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = expiry
        self.client.connect("127.0.0.1", port, clean_start=clean_start, properties=props)
        self.client.loop_start()
        flags, rc, self.props = self.connack.get(timeout=5)
        assert not rc.is_failure, rc
        self.session_present = bool(flags.session_present)

    def subscribe(self, topic: str, qos: int = 1, no_local: bool = False) -> None:
        got: queue.Queue[Any] = queue.Queue()
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: got.put(codes)
        self.client.subscribe(topic, options=SubscribeOptions(qos=qos, noLocal=no_local))
        codes = got.get(timeout=5)
        assert not codes[0].is_failure, codes

    def publish(self, topic: str, payload: bytes, qos: int = 1, props: Properties | None = None) -> None:
        self.client.publish(topic, payload, qos, properties=props).wait_for_publish(5)

    def received(self, timeout: float = 3.0) -> list[mqtt.MQTTMessage]:
        """Everything that arrives within `timeout` seconds."""
        out: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return out

    def wait_for(self, topic: str, timeout: float = 5.0) -> mqtt.MQTTMessage:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.messages.get(timeout=left)
            if msg.topic == topic:
                return msg
        raise AssertionError(f"nothing on {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _off(fn: Any, *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kw)


async def test_expired_invite_never_reaches_a_phone_that_reconnects_after_the_call_ended(make_harness):
    """An invite queued for an offline v5 phone expires with the ring time: after the call ended it is not delivered."""
    h = await make_harness(calls={"ring_timeout_s": 1.5})
    port = h.server.mqtt_port
    phone = await _off(V5, port, "resident-2", expiry=600)
    await _off(phone.subscribe, "users/2/#")
    await _off(phone.close)
    call = await h.start_call("1")
    await asyncio.sleep(3.0)  # the ring time passes: the call ends unanswered
    phone = await _off(V5, port, "resident-2", expiry=600, clean_start=False)
    assert phone.session_present
    got = await _off(phone.received, 2.0)
    await _off(phone.close)
    topics = [m.topic for m in got]
    assert "users/2/calls/incoming" not in topics, topics
    notices = [json.loads(m.payload) for m in got if m.topic == "users/2/calls/control"]
    assert any(n["call_info"]["call_id"] == call["call_id"] for n in notices), got  # the end notice does arrive


async def test_invite_carries_the_remaining_ring_time(make_harness):
    """A phone reconnecting while the call still rings gets the invite with Message Expiry below the ring time."""
    h = await make_harness(calls={"ring_timeout_s": 20})
    port = h.server.mqtt_port
    phone = await _off(V5, port, "resident-2", expiry=600)
    await _off(phone.subscribe, "users/2/#")
    await _off(phone.close)
    call = await h.start_call("1")
    await asyncio.sleep(2.2)
    phone = await _off(V5, port, "resident-2", expiry=600, clean_start=False)
    msg = await _off(phone.wait_for, "users/2/calls/incoming")
    await _off(phone.close)
    assert json.loads(msg.payload)["call_id"] == call["call_id"]
    assert 15 <= msg.properties.MessageExpiryInterval <= 18


async def test_v5_call_request_is_answered_on_its_response_topic(harness):
    """A v5 calls/request with Response Topic + Correlation Data gets its reply there, not on the control topic."""
    port = harness.server.mqtt_port
    device = await _off(V5, port, "device-1")
    await _off(device.subscribe, "devices/1/#")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "devices/1/replies/42"
    props.CorrelationData = b"corr-42"
    body = json.dumps({"request_id": "r1", "household_number": "101"}).encode()
    await _off(device.publish, "calls/request/1", body, 1, props)
    reply = await _off(device.wait_for, "devices/1/replies/42")
    assert reply.properties.CorrelationData == b"corr-42"
    answer = json.loads(reply.payload)
    assert answer["request_id"] == "r1"
    assert answer["call_id"].startswith("call-")
    rest = await _off(device.received, 1.0)
    assert not [m for m in rest if m.topic == "devices/1/calls/control" and b'"request_id"' in m.payload], rest
    # an error reply goes there too, with the same correlation data
    props.CorrelationData = b"corr-43"
    await _off(device.publish, "calls/request/1", b'{"request_id": "r2", "household_number": "101"}', 1, props)
    error = await _off(device.wait_for, "devices/1/replies/42")
    await _off(device.close)
    assert error.properties.CorrelationData == b"corr-43"
    assert json.loads(error.payload)["error"]["code"] == 409  # the device is already in a call


async def test_response_topic_outside_the_party_falls_back_to_its_control_topic(harness):
    """A Response Topic that is not one of the requester's own topics is ignored: the reply goes to its control one."""
    port = harness.server.mqtt_port
    other = await _off(V5, port, "device-5")
    await _off(other.subscribe, "devices/5/#")
    device = await _off(V5, port, "device-1")
    await _off(device.subscribe, "devices/1/#")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "devices/5/calls/control"
    props.CorrelationData = b"x"
    await _off(device.publish, "calls/request/1", b'{"request_id": "r9", "household_number": "101"}', 1, props)
    reply = await _off(device.wait_for, "devices/1/calls/control")
    assert json.loads(reply.payload)["request_id"] == "r9"
    assert not [m for m in await _off(other.received, 1.0) if b"r9" in m.payload]
    await _off(device.close)
    await _off(other.close)


async def test_no_local_stops_the_echo_of_a_party_s_own_control_messages(harness):
    """A resident subscribed to its own topics with No Local does not get its own control publish back."""
    port = harness.server.mqtt_port
    quiet = await _off(V5, port, "resident-2")
    await _off(quiet.subscribe, "users/2/#", 1, True)
    echo = await _off(V5, port, "resident-3")
    await _off(echo.subscribe, "users/3/#", 1, False)
    body = b'{"call_info": {"call_id": "call-20260101-000000000000", "action": "hangup"}}'
    await _off(quiet.publish, "users/2/calls/control", body)
    await _off(echo.publish, "users/3/calls/control", body)
    assert "users/3/calls/control" in [m.topic for m in await _off(echo.received, 1.5)]
    mine = [m for m in await _off(quiet.received, 0.5) if m.payload == body]
    await _off(quiet.close)
    await _off(echo.close)
    assert mine == []


async def test_v5_over_websocket_and_v3_beside_it(harness):
    """A v5 client on the WebSocket listener gets properties; a 3.1.1 client on TCP gets the same message plain."""
    ws = await _off(V5, harness.server.ws_port, "ws5", transport="websockets")
    await _off(ws.subscribe, "mix/#")
    async with harness.mqtt("v3") as v3:
        await v3.subscribe("mix/#", qos=1)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", "v")]
        props.ContentType = "application/json"
        sender = await _off(V5, harness.server.mqtt_port, "sender")
        await _off(sender.publish, "mix/a", b"{}", 1, props)
        msg = await _off(ws.wait_for, "mix/a")
        assert msg.properties.UserProperty == [("k", "v")]
        assert msg.properties.ContentType == "application/json"
        async with asyncio.timeout(3):
            plain = await anext(aiter(v3.messages))
        assert plain.payload == b"{}"
        assert plain.properties is None
        await _off(sender.close)
    await _off(ws.close)


async def test_qos2_call_request_is_answered_on_its_response_topic(harness):
    """A QoS 2 calls/request keeps its Response Topic and Correlation Data until its PUBREL routes it."""
    device = await _off(V5, harness.server.mqtt_port, "device-1")
    await _off(device.subscribe, "devices/1/#")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "devices/1/replies"
    props.CorrelationData = b"q2"
    await _off(device.publish, "calls/request/1", b'{"request_id": "q2", "household_number": "101"}', 2, props)
    reply = await _off(device.wait_for, "devices/1/replies")
    await _off(device.close)
    assert reply.properties.CorrelationData == b"q2"
    assert json.loads(reply.payload)["request_id"] == "q2"
