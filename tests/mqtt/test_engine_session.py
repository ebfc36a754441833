"""The engine's own Session and message classes (broker/mqtt/session.py, message.py), explicit acknowledgement of
in-flight messages (session_persistence.DurableInflight), and which engine modules may import amqtt."""

from __future__ import annotations

import ast
import asyncio
import tracemalloc
import types
from pathlib import Path
from typing import Any

import pytest
from amqtt.session import Session as AmqttSession

from broker.config import LimitsConfig
from broker.mqtt import codec
from broker.mqtt.handle_connect import ConnectMixin
from broker.mqtt.message import OutgoingMessage
from broker.mqtt.quota import INFLIGHT, Quotas
from broker.mqtt.session_db import SessionDB
from broker.mqtt.session_persistence import DurableInflight, _Counted
from tests.support.harness import Harness
from tests.support.process import ROOT
from tests.support.raw_mqtt import Raw, connect, publish

ENGINE = ROOT / "broker" / "mqtt"
# The modules that name amqtt: the compat table (it re-exports the host API), the `Broker` subclass and the amqtt
# plugin loader. The rest import amqtt's names through `amqtt_compat`.
HOSTS = {"amqtt_compat.py", "engine.py", "plugin_config.py"}


def amqtt_imports(path: Path) -> list[str]:
    """The amqtt modules `path` imports (anywhere in it, TYPE_CHECKING blocks and functions included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.split(".")[0] == "amqtt"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "amqtt":
            names.append(str(node.module))
    return names


def test_no_engine_module_imports_amqtt_outside_the_host_modules() -> None:
    """Only amqtt_compat.py, engine.py and plugin_config.py import amqtt; every other engine module gets amqtt's
    names from amqtt_compat."""
    offenders = {p.name: amqtt_imports(p) for p in sorted(ENGINE.glob("*.py"))
                 if p.name not in HOSTS and amqtt_imports(p)}
    assert offenders == {}
    assert amqtt_imports(ENGINE / "amqtt_compat.py")  # the scan does see an import


def no_dict(obj: object) -> bool:
    return not hasattr(obj, "__dict__")


async def test_sessions_and_their_messages_are_slots_objects_not_amqtts(harness: Harness) -> None:
    """A 3.1.1 and an MQTT 5 client's sessions, an unacknowledged QoS 1 delivery and a held QoS 2 publish are the
    engine's own classes, with no instance `__dict__` and no amqtt base class."""
    port = harness.server.mqtt_port
    sub = await Raw.connected(port, "slots-sub", clean=False)
    assert await sub.subscribe([("slots/t", 1)]) == [1]
    pub = await Raw.connected(port, "slots-pub5", version=5)
    await pub.send(publish("slots/t", b"one", qos=1, packet_id=1, version=5))
    await pub.send(publish("slots/held", b"two", qos=2, packet_id=2, version=5))
    delivered = await sub.next_publish()  # not acknowledged: it stays in flight
    assert delivered.payload == b"one"
    assert harness.server.broker is not None
    sessions = harness.server.broker._sessions
    await harness.until(lambda: len(sessions["slots-pub5"][0].inflight_in) == 1, what="the QoS 2 publish held")
    for cid in ("slots-sub", "slots-pub5"):
        session = sessions[cid][0]
        assert no_dict(session), f"{cid}'s {type(session).__name__} has a __dict__"
        assert not isinstance(session, AmqttSession)
    inflight = sessions["slots-sub"][0].inflight_out
    assert [m.packet_id for m in inflight.values()] == [delivered.packet_id]
    assert all(no_dict(m) for m in inflight.values())
    assert all(no_dict(m) for m in sessions["slots-pub5"][0].inflight_in.values())
    await sub.close()
    await pub.close()


async def test_an_idle_session_shares_one_empty_inflight_dict_and_a_used_one_gets_its_own(harness: Harness) -> None:
    """Sessions start with the shared, never written `NO_INFLIGHT` both ways (128 B less per idle connection); the
    first QoS 1 delivery and the first held QoS 2 publish give the session its own dict, and the shared one stays
    empty."""
    from broker.mqtt.session import NO_INFLIGHT, NO_QUEUE, Session

    assert Session().inflight_out is NO_INFLIGHT
    assert Session().inflight_in is NO_INFLIGHT
    fresh = Session()
    assert fresh.retained_messages is NO_QUEUE  # the offline queue too, until a message is kept for the session
    with pytest.raises(RuntimeError):
        NO_QUEUE.put_nowait(None)  # type: ignore[arg-type]
    assert fresh.offline_queue() is fresh.retained_messages is not NO_QUEUE
    port = harness.server.mqtt_port
    sub = await Raw.connected(port, "share-sub")
    assert await sub.subscribe([("share/t", 1)]) == [1]
    pub = await Raw.connected(port, "share-pub", version=5)
    assert harness.server.broker is not None
    sessions = harness.server.broker._sessions
    assert sessions["share-sub"][0].inflight_out is NO_INFLIGHT
    assert sessions["share-pub"][0].inflight_in is NO_INFLIGHT
    await pub.send(publish("share/t", b"one", qos=1, packet_id=1, version=5))
    await pub.send(publish("share/held", b"two", qos=2, packet_id=2, version=5))
    delivered = await sub.next_publish()  # not acknowledged: it stays in flight
    await harness.until(lambda: len(sessions["share-pub"][0].inflight_in) == 1, what="the QoS 2 publish held")
    out = sessions["share-sub"][0].inflight_out
    assert out is not NO_INFLIGHT
    assert list(out) == [delivered.packet_id]
    assert sessions["share-pub"][0].inflight_in is not NO_INFLIGHT
    assert NO_INFLIGHT == {}
    await sub.close()
    await pub.close()


async def test_sessions_restored_at_start_are_the_engines(make_harness: Any) -> None:
    """A persistent session restored from sessions.db at start is the engine's Session (not amqtt's), keeps its
    subscription and in-flight message, and its client resumes it: session present, the message re-sent with DUP."""
    h1 = await make_harness()
    sub = await Raw.connected(h1.server.mqtt_port, "restored-1", clean=False)
    assert await sub.subscribe([("restored/t", 1)]) == [1]
    pub = await Raw.connected(h1.server.mqtt_port, "restored-pub")
    await pub.send(publish("restored/t", b"kept", qos=1, packet_id=1))
    first = await sub.next_publish()  # not acknowledged
    await pub.close()
    await sub.close()
    await h1.offline("restored-1")
    await h1.server.stop()

    h2 = await make_harness(h1.server.settings)
    session = h2.server.broker._sessions["restored-1"][0]
    assert no_dict(session)
    assert not isinstance(session, AmqttSession)
    assert session.transitions.state == "disconnected"
    assert [m.data for m in session.inflight_out.values()] == [b"kept"]
    sub = await Raw.connected(h2.server.mqtt_port, "restored-1", clean=False)
    assert sub.session_present
    again = await sub.next_publish()
    assert (again.payload, again.packet_id, again.dup) == (b"kept", first.packet_id, True)
    await sub.puback(again.packet_id)
    await h2.until(lambda: not session.inflight_out, what="the PUBACK forgets the message")
    await sub.close()


def test_only_an_acknowledgement_removes_an_in_flight_message() -> None:
    """DurableInflight: popping a message is its acknowledgement, whenever it happens (also while an exception is
    being handled): it leaves memory, disk and the principal's in-flight bytes. Until then it stays."""
    db = SessionDB(None)
    quotas = Quotas()
    inflight = DurableInflight(db, "ack-1", _Counted(quotas, "p", "ack-1"))
    inflight[1] = OutgoingMessage(1, "t", 1, b"x" * 10, False, None)
    inflight[2] = OutgoingMessage(2, "t", 1, b"y" * 20, False, None)
    assert quotas.used("p", INFLIGHT) == 30

    def rows() -> list[int]:
        return [r[0] for r in db.conn.execute("SELECT packet_id FROM mqtt_inflight ORDER BY packet_id")]

    try:
        raise asyncio.CancelledError  # a connection ending around the PUBACK
    except asyncio.CancelledError:
        assert inflight.pop(1) is not None
    assert list(inflight) == [2]
    assert rows() == [2]
    assert quotas.used("p", INFLIGHT) == 20
    assert inflight.pop(7) is None  # an unknown packet id changes nothing
    assert rows() == [2]
    db.close()


def test_a_session_costs_under_600_bytes() -> None:
    """1,000 sessions built as handle_connect builds them for 3.1.1 CONNECTs cost under 600 bytes each
    (tracemalloc; amqtt's Session subclass cost ~850)."""
    me = types.SimpleNamespace(limits=LimitsConfig())
    writer = types.SimpleNamespace(get_peer_info=lambda: ("127.0.0.1", 40000), get_ssl_info=lambda: None)
    connects = [codec.decode_connect(connect(f"mem-{i:05d}", clean=False)[2:]) for i in range(1000)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [ConnectMixin._new_session(me, c, writer, None)[0] for c in connects]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(kept) == 1000
    assert total / len(kept) < 600, f"{total / len(kept):.0f} bytes per session"


async def test_a_resumed_session_gets_each_message_once_what_it_owed_with_dup(make_harness: Any) -> None:
    """A message delivered while a resumed session's connection is being set up (a plugin publishes at
    client_connected) goes out once, without DUP; only what was in flight before the connection is re-sent, DUP."""
    h = await make_harness(mqtt={"plugins": {"tests.mqtt.amqtt_event_probe.PublishOnConnect": {}}})
    sub = await Raw.connected(h.server.mqtt_port, "dup-1", clean=False)
    assert await sub.subscribe([("dup/t", 1)]) == [1]
    pub = await Raw.connected(h.server.mqtt_port, "pub-of-dup")
    await pub.send(publish("dup/t", b"first", qos=1, packet_id=1))
    first = await sub.next_publish()  # not acknowledged
    sub.abort()
    await h.offline("dup-1")
    sub = await Raw.connected(h.server.mqtt_port, "dup-1", clean=False)
    got = await sub.publishes_within(1.0)
    seen = [(p.payload, p.dup) for p in got]
    assert sorted(seen) == [(b"during-connect", False), (b"first", True)], seen
    assert next(p.packet_id for p in got if p.payload == b"first") == first.packet_id
    await sub.close()
    await pub.close()
