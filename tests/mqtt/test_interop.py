"""The ten scenarios of Eclipse Paho's MQTT 3.1.1 interoperability suite, against the real server in local-only mode.

Re-written from the scenario descriptions of `eclipse/paho.mqtt.testing` `interoperability/client_test.py`
(same topics, same expectations); none of its code is used. A raw-socket client plays the parts the suite's
own client plays by misbehaving (never acknowledging, never pinging); paho-mqtt plays the well-behaved ones.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from tests.support.process import INTEROP_CONFIG, NOSUBSCRIBE, ServerProcess
from tests.support.raw_mqtt import PUBACK, PUBCOMP, PUBREC, PUBREL, SyncRaw, ack, connect

TOPICS = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
WILDTOPICS = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, server_loop: str) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("interop"), INTEROP_CONFIG, loop=server_loop).start()
    yield s
    s.stop()


# -- paho for the well-behaved parts ---------------------------------------------------------------


class Paho:
    def __init__(self, port: int, client_id: str, clean: bool = True) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.suback: queue.Queue[list[int]] = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                             protocol=mqtt.MQTTv311)
        self.c.on_message = lambda _c, _u, m: self.messages.put(m)
        self.c.on_subscribe = lambda _c, _u, _mid, codes, _p: self.suback.put([c.value for c in codes])
        self.c.connect("127.0.0.1", port, keepalive=60)
        self.c.loop_start()
        for _ in range(100):
            if self.c.is_connected():
                break
            time.sleep(0.05)
        assert self.c.is_connected()

    def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        self.c.subscribe(filters)
        return self.suback.get(timeout=5)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos, retain).wait_for_publish(5)

    def drain(self, seconds: float, count: int = 0) -> list[mqtt.MQTTMessage]:
        """Messages arriving within `seconds`; stops early once `count` (if given) have arrived."""
        out, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and (not count or len(out) < count):
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# -- the scenarios ---------------------------------------------------------------------------------


def test_basic(server):
    """Connect twice (no session present), QoS 0/1/2 round trip; a second CONNECT and a bad protocol name fail."""
    a = SyncRaw(server.mqtt_port, "myclientid", clean=True)
    a.close()
    a = Paho(server.mqtt_port, "myclientid")
    assert a.subscribe([(TOPICS[0], 2)]) == [2]
    for qos in (0, 1, 2):
        a.publish(TOPICS[0], f"qos {qos}".encode(), qos)
    got = a.drain(2.0, count=3)
    assert sorted(m.payload for m in got) == [b"qos 0", b"qos 1", b"qos 2"]
    a.close()
    r = SyncRaw(server.mqtt_port, "myclientid")
    assert r.connack == (0x20, b"\x00\x00")
    r.send(connect("myclientid"))
    assert r.read() is None  # a second CONNECT closes the connection
    r.close(disconnect=False)
    bad = SyncRaw(server.mqtt_port, "myclientid", proto=b"hj")
    assert bad.connack is None or bad.connack[1][1] != 0
    bad.close(disconnect=False)


def test_retained_messages(server):
    """Retained QoS 0/1/2 messages reach a later subscriber; once cleared, none do."""
    a = Paho(server.mqtt_port, "myclientid")
    for i, qos in ((1, 0), (2, 1), (3, 2)):
        a.publish(TOPICS[i], f"qos {qos}".encode(), qos, retain=True)
    a.subscribe([(WILDTOPICS[5], 2)])
    got = a.drain(2.0, count=3)
    assert sorted(m.topic for m in got) == sorted(TOPICS[1:4])
    assert all(m.retain for m in got)
    a.close()
    a = Paho(server.mqtt_port, "myclientid")
    for i, qos in ((1, 0), (2, 1), (3, 2)):
        a.publish(TOPICS[i], b"", qos, retain=True)
    time.sleep(0.3)
    a.subscribe([(WILDTOPICS[5], 2)])
    assert a.drain(1.0) == []
    a.close()


def test_will_message_on_abrupt_disconnect(server):
    """A client that vanishes without DISCONNECT has its Will published to subscribers."""
    b = Paho(server.mqtt_port, "myclientid2")
    b.subscribe([(TOPICS[2], 2)])
    a = SyncRaw(server.mqtt_port, "myclientid", will=(TOPICS[2], b"client not disconnected"), keepalive=2)
    a.close(disconnect=False)
    got = b.drain(2.0, count=1)
    assert [m.payload for m in got] == [b"client not disconnected"]
    b.close()


def test_zero_length_clientid(server):
    """A zero-length client id is refused with clean session off and accepted with it on."""
    r = SyncRaw(server.mqtt_port, "", clean=False)
    assert r.connack == (0x20, b"\x00\x02")
    r.close(disconnect=False)
    r = SyncRaw(server.mqtt_port, "", clean=True)
    assert r.connack == (0x20, b"\x00\x00")
    r.close()


def test_offline_message_queueing(server):
    """QoS 1/2 messages published while a persistent, anonymous session is offline arrive when it returns."""
    a = SyncRaw(server.mqtt_port, "myclientid", clean=False)
    a.subscribe([(WILDTOPICS[5], 2)])
    a.close()
    time.sleep(0.2)
    b = Paho(server.mqtt_port, "myclientid2")
    for i, qos in ((1, 0), (2, 1), (3, 2)):
        b.publish(TOPICS[i], f"qos {qos}".encode(), qos)
    b.close()
    a = Paho(server.mqtt_port, "myclientid", clean=False)
    got = a.drain(1.5)
    assert len(got) in (2, 3)
    assert {TOPICS[2], TOPICS[3]} <= {m.topic for m in got}
    a.close()


def test_overlapping_subscriptions(server):
    """Overlapping filters give one message at the highest QoS, or one per filter at its QoS."""
    a = Paho(server.mqtt_port, "myclientid")
    a.subscribe([(WILDTOPICS[6], 2), (WILDTOPICS[0], 1)])
    a.publish(TOPICS[3], b"overlapping topic filters", 2)
    qos = sorted(m.qos for m in a.drain(1.0))
    assert qos in ([2], [1, 2])
    a.close()


def test_keepalive(server):
    """A client that stops talking is dropped after 1.5 x keepalive and its Will is published."""
    b = Paho(server.mqtt_port, "myclientid2")
    b.subscribe([(TOPICS[4], 2)])
    a = SyncRaw(server.mqtt_port, "myclientid", keepalive=1, will=(TOPICS[4], b"keepalive expiry"))
    got = b.drain(6.0, count=1)
    assert [m.payload for m in got] == [b"keepalive expiry"]
    a.close(disconnect=False)
    b.close()


def test_redelivery_on_reconnect(server):
    """QoS 1 and 2 messages a client never acknowledged are re-sent, DUP set, when it reconnects."""
    b = SyncRaw(server.mqtt_port, "myclientid2", clean=False)
    b.subscribe([(WILDTOPICS[6], 2)])
    pub = Paho(server.mqtt_port, "redelivery-publisher")
    pub.publish(TOPICS[1], b"", 1)
    pub.publish(TOPICS[3], b"", 2)
    pub.close()
    first = b.publishes_within(1.0)
    assert sorted(p.topic for p in first) == [TOPICS[1], TOPICS[3]]
    b.close()
    b = SyncRaw(server.mqtt_port, "myclientid2", clean=False)
    assert b.connack == (0x20, b"\x01\x00")  # session present
    again = b.publishes_within(1.0)
    assert sorted(p.topic for p in again) == [TOPICS[1], TOPICS[3]]
    assert all(p.dup for p in again)
    for p in again:  # now behave: PUBACK, or PUBREC then PUBCOMP
        b.send(ack(PUBACK if p.qos == 1 else PUBREC, p.packet_id))
    rel = b.read()
    assert rel is not None
    assert rel[0] == PUBREL
    b.send(ack(PUBCOMP, int.from_bytes(rel[1], "big")))
    b.close()
    SyncRaw(server.mqtt_port, "myclientid2", clean=True).close()


def test_persistent_connect_does_not_resume_a_clean_session(server):
    """A clean_session=0 CONNECT right after a clean session of the same id gets a fresh persistent session."""
    SyncRaw(server.mqtt_port, "interop-flip", clean=True).close()
    a = SyncRaw(server.mqtt_port, "interop-flip", clean=False)
    assert a.connack == (0x20, b"\x00\x00")
    a.subscribe([("flip/#", 1)])
    a.close()
    time.sleep(0.2)
    b = Paho(server.mqtt_port, "interop-flip-pub")
    b.publish("flip/x", b"queued", 1)
    b.close()
    a = SyncRaw(server.mqtt_port, "interop-flip", clean=False)
    got = a.publishes_within(1.0)
    a.close()
    SyncRaw(server.mqtt_port, "interop-flip", clean=True).close()
    assert [p.topic for p in got] == ["flip/x"]


def test_subscribe_failure(server):
    """A SUBSCRIBE to a filter the ACL forbids gets return code 0x80."""
    a = Paho(server.mqtt_port, "myclientid")
    codes = a.subscribe([(NOSUBSCRIBE, 2)])
    a.close()
    assert codes == [0x80]


def test_dollar_topics(server):
    """A message on a $-topic is acknowledged but not delivered to a `+/+` subscriber."""
    b = Paho(server.mqtt_port, "myclientid2")
    b.subscribe([(WILDTOPICS[5], 2)])
    b.drain(0.3)
    info = b.c.publish("$" + TOPICS[1], b"", 1)
    info.wait_for_publish(2)
    got = b.drain(0.5)
    published = info.is_published()
    b.close()
    assert got == []
    assert published


def test_unsubscribe(server):
    """After UNSUBSCRIBE from one of three topics only the other two are delivered."""
    b = Paho(server.mqtt_port, "myclientid2")
    for t in TOPICS[:3]:
        b.subscribe([(t, 2)])
    b.c.unsubscribe(TOPICS[0])
    time.sleep(0.2)
    a = Paho(server.mqtt_port, "myclientid")
    for t in TOPICS[:3]:
        a.publish(t, b"", 1)
    got = b.drain(1.0)
    a.close()
    b.close()
    assert sorted(m.topic for m in got) == sorted(TOPICS[1:3])
