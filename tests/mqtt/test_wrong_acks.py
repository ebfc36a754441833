"""A client that acknowledges a delivery with the wrong packet is a protocol error (Mosquitto's FLOW tests):
MQTT 5 gets DISCONNECT 0x82, 3.1.1 is closed; the broker stays healthy for everyone else."""

from __future__ import annotations

import pytest

from tests.support.raw_mqtt import (
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    Raw,
    ack,
    connack5,
    connect5,
    disconnect_reason,
    parse_publish,
    subscribe5,
)

# (delivery QoS, the client's answers in order; the last one is the wrong one)
WRONG = {
    "QoS 1 answered with PUBREC": (1, [PUBREC]),
    "QoS 1 answered with PUBCOMP": (1, [PUBCOMP]),
    "QoS 2 answered with PUBACK": (2, [PUBACK]),
    "QoS 2 answered with PUBCOMP before PUBREC": (2, [PUBCOMP]),
    "QoS 2 PUBREL answered with PUBACK": (2, [PUBREC, PUBACK]),
}


async def _subscriber(harness, version: int, client_id: str, qos: int) -> Raw:
    raw = await Raw.open(harness.server.mqtt_port)
    if version == 5:
        got = await connack5(raw, connect5(client_id))
        assert got is not None, got
        assert got[0] == 0, got
        await raw.send(subscribe5([("wrong/#", qos)]))
        got_sub = await raw.read_packet()
        assert got_sub is not None
        assert got_sub[0] == SUBACK
    else:
        raw = await Raw.connected(harness.server.mqtt_port, client_id)
        assert await raw.subscribe([("wrong/#", qos)]) == [qos]
    return raw


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize(("qos", "answers"), WRONG.values(), ids=WRONG.keys())
async def test_wrong_ack_is_a_protocol_error(harness, version, qos, answers):
    """The wrong acknowledgement ends the connection (v5: DISCONNECT 0x82 Protocol Error first)."""
    raw = await _subscriber(harness, version, f"wrong-{version}-{qos}-{len(answers)}", qos)
    harness.server.broker.publish("wrong/a", b"m", qos=qos)
    got = await raw.read_packet()
    assert got is not None, got
    assert got[0] & 0xF0 == PUBLISH, got
    packet_id = parse_publish(*got).packet_id  # v5: the id too follows the topic
    for first in answers[:-1]:
        await raw.send(ack(first, packet_id))
        assert await raw.read_packet() == (PUBREL, packet_id.to_bytes(2, "big"))
    await raw.send(ack(answers[-1], packet_id))
    if version == 5:
        assert await disconnect_reason(raw) == 0x82
    assert await raw.closed(3)
    await raw.close()
    probe = await _subscriber(harness, version, "probe", 1)  # the broker still serves
    await probe.close(disconnect=True)


@pytest.mark.parametrize("version", [4, 5])
async def test_right_acks_still_complete(harness, version):
    """The right acknowledgements still complete QoS 1 and QoS 2 deliveries and keep the connection."""
    raw = await _subscriber(harness, version, f"right-{version}", 2)
    broker = harness.server.broker
    for qos in (1, 2):
        broker.publish("wrong/b", b"m", qos=qos)
        got = await raw.read_packet()
        assert got is not None
        assert got[0] & 0xF0 == PUBLISH
        packet_id = parse_publish(*got).packet_id  # v5: the id too follows the topic
        if qos == 1:
            await raw.send(ack(PUBACK, packet_id))
        else:
            await raw.send(ack(PUBREC, packet_id))
            assert await raw.read_packet() == (PUBREL, packet_id.to_bytes(2, "big"))
            await raw.send(ack(PUBCOMP, packet_id))
    await raw.send(b"\xc0\x00")
    assert await raw.read_packet() == (0xD0, b"")
    assert not broker._sessions[f"right-{version}"][0].inflight_out
    await raw.close(disconnect=True)
