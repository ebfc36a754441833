"""TLS: MQTT over TLS (optionally with client certificates) and HTTPS for the REST app."""

from __future__ import annotations

import shutil

import aiomqtt
import pytest

from tests.support.raw_mqtt import Raw, connect
from tests.support.tls import client_ctx, tls_section

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make certificates")


async def test_mqtt_over_tls_serves_and_plain_bytes_are_refused(make_harness, pki):
    """A client trusting our CA connects over TLS and receives; plaintext CONNECT to the TLS port gets nothing."""
    h = await make_harness(mqtt={"tls": tls_section(pki)})
    port = h.server.mqtts_port
    async with aiomqtt.Client("127.0.0.1", port, identifier="tls-client", tls_context=client_ctx(pki)) as c:
        await c.subscribe("t/#", qos=1)
        h.server.broker.publish("t/x", b"secret", qos=1)
        msg = await anext(aiter(c.messages))
        assert msg.payload == b"secret"
    raw = await Raw.open(port)
    assert await raw.connack(connect("plain")) is None
    await raw.close()


async def test_client_certificate_can_be_required(make_harness, pki):
    """With `require_client_cert`, a client without a certificate is refused and one with ours connects."""
    h = await make_harness(mqtt={"tls": tls_section(pki, cafile=str(pki / "ca.crt"), require_client_cert=True,
                                                    plain=False)})
    port = h.server.mqtts_port
    assert port == h.server.mqtt_port  # plain: false -> the TLS listener is the default one
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", port, identifier="no-cert", tls_context=client_ctx(pki), timeout=3):
            pass
    async with aiomqtt.Client("127.0.0.1", port, identifier="with-cert",
                              tls_context=client_ctx(pki, with_cert=True)) as c:
        await c.subscribe("t/#", qos=0)


async def test_rest_over_https(make_harness, pki):
    """With `http.tls`, the REST app answers over HTTPS to a client trusting our CA."""
    h = await make_harness(http={"tls": {"certfile": str(pki / "server.crt"), "keyfile": str(pki / "server.key")}})
    url = f"https://127.0.0.1:{h.server.http_port}/healthz"
    async with h.http.get(url, ssl=client_ctx(pki)) as r:
        assert r.status == 200
        assert (await r.json())["data"]["broker"] is True
