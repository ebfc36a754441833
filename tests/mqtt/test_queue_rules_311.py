"""MQTT 3.1.1 offline queues: RETAIN 0 on queued deliveries [MQTT-3.3.1-9], no expired or stale message, and
each retained message once on resume."""

from __future__ import annotations

import asyncio
import json

from tests.support.harness import Harness
from tests.support.process import INTEROP_CONFIG
from tests.support.raw_mqtt import (
    PUBLISH,
    Publish,
    Raw,
    connack5,
    connect,
    connect5,
    parse_publish,
    prop,
    props,
    publish5,
)


async def _away(h: Harness, client_id: str, topic_filter: str) -> None:
    """A 3.1.1 client with a persistent session subscribes at QoS 1, then leaves (DISCONNECT)."""
    raw = await Raw.connected(h.server.mqtt_port, client_id, clean=False)
    assert await raw.subscribe([(topic_filter, 1)]) == [1]
    await raw.close(disconnect=True)
    await h.offline(client_id)


async def _acked(raw: Raw, quiet_s: float = 1.0) -> list[Publish]:
    """Every PUBLISH until the connection is quiet for `quiet_s`, each acknowledged as a client does."""
    out: list[Publish] = []
    while (got := await raw.poll(quiet_s)) is not None:
        if got[0] & 0xF0 == PUBLISH:
            out.append(p := parse_publish(*got))
            if p.qos:
                await raw.puback(p.packet_id)
    return out


async def test_queued_messages_come_back_with_retain_0_and_expired_ones_not_at_all(make_harness):
    """While a 3.1.1 session is away: a retained publish (no expiry) and a v5 publish with a 1 s Message
    Expiry; on return after 1.5 s it gets the first once with RETAIN 0 and never the expired one."""
    h = await make_harness(**INTEROP_CONFIG)
    port = h.server.mqtt_port
    await _away(h, "phone", "news/#")
    pub = await Raw.open(port)
    got = await connack5(pub, connect5("pub5"))
    assert got is not None
    assert got[0] == 0
    await pub.send(publish5("news/old", b"stale", qos=1, properties=props(prop(0x02, 1, "i"))))
    await pub.send(publish5("news/kept", b"kept", qos=1, flags=0x03))  # QoS 1, RETAIN 1
    await asyncio.sleep(1.5)
    back = await Raw.open(port)
    assert await back.connack(connect("phone", clean=False)) == 0
    assert back.session_present
    received = await _acked(back)
    assert [(p.topic, p.payload, p.retain) for p in received] == [("news/kept", b"kept", False)]
    await back.close(disconnect=True)
    await pub.close()


async def test_a_phone_back_after_the_call_ended_gets_no_invite_and_the_missed_count_once(make_harness):
    """Resident 3 (3.1.1, persistent) is away while device 1 rings household 101 and hangs up: on return it
    gets the `cancelled` but not the dead invite, nothing with RETAIN 1 twice, and `calls/missed` once."""
    h = await make_harness()
    port = h.server.mqtt_port
    await _away(h, "resident-3", "users/3/#")
    call = await h.start_call()
    status, resp = await h.post("/api/mqtt/controller/device",
                                {"device_id": "1", "call_info": {"call_id": call["call_id"], "action": "hangup"}})
    assert status == 200, resp
    await asyncio.sleep(0.3)
    back = await Raw.open(port)
    assert await back.connack(connect("resident-3", clean=False)) == 0
    assert back.session_present
    received = await _acked(back)
    topics = [p.topic for p in received]
    assert "users/3/calls/incoming" not in topics, topics
    assert topics.count("users/3/calls/missed") == 1, topics
    control = [json.loads(p.payload) for p in received if p.topic == "users/3/calls/control"]
    assert [c["call_info"]["action"] for c in control] == ["cancelled"], control
    assert not any(p.retain for p in received if p.topic != "users/3/calls/missed"), received
    await back.close(disconnect=True)
