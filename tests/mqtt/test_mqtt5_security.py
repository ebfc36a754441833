"""MQTT 5 under the same hardening as 3.1.1: auth plugin, client-id binding, ACL, Will ACL, takeover, TLS,
and sessions that outlive a restart for exactly their Session Expiry Interval."""

from __future__ import annotations

import asyncio
import ssl

from broker.server import IntercomServer
from tests.support.raw_mqtt import (
    PUBACK,
    PUBLISH,
    SUBACK,
    Raw,
    connack5,
    connect5,
    disconnect_reason,
    prop,
    props,
    publish5,
    read_props,
    subscribe5,
)
from tests.support.security import secure_harness
from tests.support.tls import client_ctx, tls_section


async def _rc(port: int, data: bytes) -> int | None:
    raw = await Raw.open(port)
    try:
        got = await connack5(raw, data)
        return None if got is None else got[0]
    finally:
        await raw.close()


async def test_v5_credentials_and_client_id_binding(make_harness):
    """A bad token gets CONNACK 0x87, a foreign client id 0x85, the right token and id 0x00."""
    h, t = await secure_harness(make_harness)
    port = h.server.mqtt_port
    assert await _rc(port, connect5("resident-2", username="2", password=b"resident.2.wrongwrongwrongwrong")) == 0x87
    assert await _rc(port, connect5("resident-2")) == 0x87
    assert await _rc(port, connect5("resident-3", username="2", password=t["resident-2"].encode())) == 0x85
    assert await _rc(port, connect5("resident-2", username="2", password=t["resident-2"].encode())) == 0


async def test_v5_acl_and_will_topic_acl(make_harness):
    """The topic ACL holds for v5: SUBACK 0x80 and PUBACK 0x87 outside a party's topics, a foreign Will refused."""
    h, t = await secure_harness(make_harness)
    port = h.server.mqtt_port
    will = ("users/3/calls/control", b"x", 0, False, b"\x00")
    assert await _rc(port, connect5("resident-2", username="2", password=t["resident-2"].encode(), will=will)) == 0x87
    raw = await Raw.open(port)
    got = await connack5(raw, connect5("resident-2", username="2", password=t["resident-2"].encode()))
    assert got is not None
    assert got[0] == 0
    await raw.send(subscribe5([("users/2/#", 1), ("users/3/#", 1)]))
    first, body = await raw.read_packet()
    assert first == SUBACK
    assert body[-2:] == b"\x01\x80"
    await raw.send(publish5("users/3/calls/control", b"{}", qos=1, packet_id=9))
    assert await raw.read_packet() == (PUBACK, b"\x00\x09\x87")
    await raw.close()


async def test_takeover_sends_disconnect_0x8e_to_the_old_v5_connection(harness):
    """A second CONNECT with the same client id ends the first v5 connection with DISCONNECT 0x8E."""
    old = await Raw.open(harness.server.mqtt_port)
    assert (await connack5(old, connect5("twin")))[0] == 0
    new = await Raw.open(harness.server.mqtt_port)
    assert (await connack5(new, connect5("twin")))[0] == 0
    assert await disconnect_reason(old) == 0x8E
    await old.close()
    await new.close()


async def test_v5_over_tls(make_harness, pki):
    """A v5 client connects over the TLS listener and gets its CONNACK with properties."""
    h = await make_harness(mqtt={"tls": tls_section(pki)})
    reader, writer = await asyncio.open_connection("127.0.0.1", h.server.mqtts_port, ssl=client_ctx(pki),
                                                   server_hostname="127.0.0.1")
    raw = Raw(reader, writer)
    got = await connack5(raw, connect5("tls5"))
    assert got is not None
    assert got[0] == 0
    assert got[1][0x21] == h.server.settings.limits.max_inflight_messages
    await raw.send(subscribe5([("t/#", 1)]))
    assert (await raw.read_packet())[0] == SUBACK
    h.server.broker.publish("t/x", b"secret", qos=1)
    first, body = await raw.read_packet()
    assert first & 0xF0 == PUBLISH
    assert body.endswith(b"secret")
    await raw.close()
    assert isinstance(client_ctx(pki), ssl.SSLContext)


async def test_session_expiry_and_queued_properties_survive_a_restart(tmp_path, settings_factory):
    """A v5 session comes back after a restart with its options, identifier and queued message (remaining expiry);
    one whose Session Expiry passed while the broker was down does not."""
    settings = settings_factory()
    server = IntercomServer(settings)
    await server.start()
    keep = props(prop(0x11, 600, "i"))
    raw = await Raw.open(server.mqtt_port)
    assert (await connack5(raw, connect5("keeper", properties=keep)))[0] == 0
    await raw.send(subscribe5([("k/#", 0x04 | 1)], properties=props(prop(0x0B, 77, "v"))))
    assert (await raw.read_packet())[0] == SUBACK
    await raw.close()
    short = await Raw.open(server.mqtt_port)
    assert (await connack5(short, connect5("brief", properties=props(prop(0x11, 2, "i")))))[0] == 0
    await short.send(subscribe5([("k/#", 1)]))
    assert (await short.read_packet())[0] == SUBACK
    await short.close()
    pub = await Raw.open(server.mqtt_port)
    assert (await connack5(pub, connect5("pub")))[0] == 0
    await pub.send(publish5("k/a", b"queued", qos=1, properties=props(prop(0x02, 60, "i"), prop(0x03, "t/x", "s"))))
    assert (await pub.read_packet())[0] == PUBACK
    await pub.close()
    await asyncio.sleep(0.3)
    await server.stop()
    await asyncio.sleep(2.5)  # "brief" expires while the broker is down

    server = IntercomServer(settings)
    await server.start()
    try:
        raw = await Raw.open(server.mqtt_port)
        await raw.send(connect5("keeper", clean=False, properties=keep))
        first, body = await raw.read_packet()
        assert first == 0x20
        assert body[0] == 1
        assert body[1] == 0
        first, body = await raw.read_packet()
        assert first & 0xF0 == PUBLISH
        assert body.endswith(b"queued")
        found, _ = read_props(body, 2 + 3 + 2)
        assert 50 <= found[0x02] <= 60
        assert found[0x03] == b"t/x"
        await raw.close()
        session = server.broker._sessions["keeper"][0]
        options = session.attributes["intercom.sub_options"]["k/#"]
        assert options.no_local
        assert options.sub_id == 77
        brief = await Raw.open(server.mqtt_port)
        await brief.send(connect5("brief", clean=False, properties=props(prop(0x11, 2, "i"))))
        first, body = await brief.read_packet()
        assert first == 0x20
        assert body[0] == 0
        await brief.close()
    finally:
        await server.stop()
