"""Bridge basics against a real Mosquitto: mqtts:// with a CA and client certificates, /healthz while the link is
down, reconnect back-off, and every bridge setting on the command line."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
import yaml

from broker.bridge import BridgedServer, backoff_delay, parse_broker_url
from broker.config import ConfigError
from tests.mosquitto_helpers import Mosquitto, free_port, needs_mosquitto
from tests.support.harness import Harness, make_settings
from tests.support.inbox import Inbox
from tests.support.process import ROOT
from tests.support.tls import client_ctx, make_pki

pytestmark = needs_mosquitto


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    d.mkdir()
    return make_pki(d)


def tls_listener(pki: Path, require_cert: bool = True) -> str:
    return (f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
            f"require_certificate {'true' if require_cert else 'false'}\n")


@pytest.fixture
async def tls_mosquitto(tmp_path: Path, pki: Path) -> AsyncIterator[Mosquitto]:
    """Mosquitto with only a TLS listener that requires a client certificate signed by the test CA."""
    mosq = Mosquitto(tmp_path, listener=tls_listener(pki))
    await mosq.start()
    yield mosq
    mosq.stop()


async def healthz(h: Harness) -> tuple[int, dict[str, Any]]:
    async with h.http.get(h.base + "/healthz") as r:
        return r.status, await r.json()


async def wait_health(h: Harness, status: int, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got, body = await healthz(h)
        if got == status or time.monotonic() > deadline:
            assert got == status, body
            return body
        await asyncio.sleep(0.1)


async def started(tmp_path: Path, target: Any, **kw: Any) -> Harness:
    server = BridgedServer(make_settings(tmp_path), target, **kw)
    await server.start(connect_timeout=5)
    return Harness(server, aiohttp.ClientSession())  # type: ignore[arg-type]


async def closed(h: Harness) -> None:
    await h.http.close()
    await h.server.stop()


async def test_mqtts_with_ca_and_client_cert_carries_a_call(tmp_path, pki, tls_mosquitto):
    """mqtts:// with --broker-ca and a client certificate: the bridge connects over TLS and a call rings."""
    target = parse_broker_url(f"mqtts://127.0.0.1:{tls_mosquitto.port}", pki / "ca.crt", pki / "client.crt",
                              pki / "client.key")
    h = await started(tmp_path, target)
    try:
        assert h.server.bridge.connected.is_set()
        status, body = await healthz(h)
        assert status == 200
        assert body["data"]["healthy"] is True
        async with aiomqtt.Client("127.0.0.1", tls_mosquitto.port, identifier="resident-2",
                                  tls_context=client_ctx(pki, with_cert=True)) as r2:
            await r2.subscribe("users/2/#", qos=1)
            inbox = Inbox(r2)
            call_id = (await h.start_call("1"))["call_id"]
            topic, incoming = await inbox.wait_for(lambda t, b: t.endswith("/calls/incoming"))
            assert topic == "users/2/calls/incoming"
            assert incoming["call_id"] == call_id
            await inbox.close()
    finally:
        await closed(h)


async def test_mqtts_without_the_client_cert_is_unhealthy_with_the_reason(tmp_path, pki, tls_mosquitto):
    """A broker that requires a client certificate refuses the bridge without one: /healthz is 503 and says why."""
    target = parse_broker_url(f"mqtts://127.0.0.1:{tls_mosquitto.port}", pki / "ca.crt")
    server = BridgedServer(make_settings(tmp_path), target)
    await server.start(connect_timeout=1)
    h = Harness(server, aiohttp.ClientSession())  # type: ignore[arg-type]
    try:
        assert not server.bridge.connected.is_set()
        body = await wait_health(h, 503)
        assert "external broker mqtts://127.0.0.1" in body["message"]
        assert body["data"]["healthy"] is False
    finally:
        await closed(h)


async def test_healthz_is_503_while_the_broker_is_down_and_200_once_back(tmp_path):
    """Stopping the external broker turns /healthz to 503 with the reason; restarting it brings back 200."""
    mosq = Mosquitto(tmp_path)
    await mosq.start()
    h = await started(tmp_path, f"mqtt://127.0.0.1:{mosq.port}")
    try:
        await wait_health(h, 200)
        mosq.stop()
        body = await wait_health(h, 503)
        assert f"external broker mqtt://127.0.0.1:{mosq.port} unreachable" in body["message"]
        assert body["data"]["broker"] is True
        assert body["data"]["http"] is True
        await mosq.start()
        body = await wait_health(h, 200, timeout=40)  # within the back-off cap
        assert body["data"]["problems"] == []
    finally:
        await closed(h)
        mosq.stop()


async def test_reconnect_attempts_back_off(tmp_path):
    """Against a port where nothing listens, attempts are counted and spaced out more and more (capped)."""
    assert [round(backoff_delay(a, _Fixed()), 3) for a in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.6]
    assert backoff_delay(50, _Fixed()) == 30.0
    assert all(0.1 <= backoff_delay(1) <= 0.2 for _ in range(50))  # jittered down by up to a half, never up
    h = await started(tmp_path, f"mqtt://127.0.0.1:{free_port()}")
    try:
        await asyncio.sleep(2.5)
        bridge = h.server.bridge
        assert 3 <= bridge.attempts <= 8, bridge.attempts  # ~7.5 s in: a fixed 0.2 s retry would be ~37
        assert "Connection refused" in (bridge.down_reason() or "")
    finally:
        await closed(h)


class _Fixed:
    """A random source that always says 1.0, so the delay is its ceiling."""

    def random(self) -> float:
        return 1.0


@pytest.mark.parametrize(("url", "files"), [
    ("mqtt://127.0.0.1:1883", {"ca_file": "ca.crt"}),     # TLS files without mqtts
    ("mqtts://127.0.0.1:8883", {"key_file": "client.key"}),  # a key without its certificate
    ("mqtts://127.0.0.1:8883", {"ca_file": "missing.crt"}),  # an unreadable CA
])
def test_bad_tls_settings_are_config_errors(pki, url, files):
    with pytest.raises(ConfigError):
        parse_broker_url(url, **{k: pki / v for k, v in files.items()})


def test_mqtts_defaults_to_port_8883():
    target = parse_broker_url("mqtts://broker.example")
    assert (target.port, target.tls, target.url) == (8883, True, "mqtts://broker.example:8883")


BRIDGE_READY = re.compile(r"intercom-broker \(bridge\) http://127\.0\.0\.1:(\d+) external=(\S+) site=(\S+)")


def spawn(tmp_path: Path, *flags: str) -> subprocess.Popen[str]:
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump({"auth": {"pbkdf2_iterations": 1000}, "site": {"households": [
        {"household_number": "101", "residents": [{"resident_id": "2"}], "devices": [{"device_id": "1"}]}]}}))
    env = {**os.environ, "INTERCOM_TRTC_SECRET_KEY": "subprocess-test-secret"}
    env.pop("INTERCOM_ADMIN_TOKEN", None)
    return subprocess.Popen([sys.executable, "-m", "broker", "--config", str(config), "--host", "127.0.0.1",
                             "--http-port", "0", "--data-dir", str(tmp_path / "data"), *flags],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_every_bridge_setting_on_the_command_line(tmp_path, pki):
    """intercom-broker --external-broker mqtts://... --broker-ca/-cert/-key --site-id --shared-group serves a call."""
    mosq = Mosquitto(tmp_path, listener=tls_listener(pki))
    asyncio.run(mosq.start())
    proc = spawn(tmp_path, "--external-broker", f"mqtts://127.0.0.1:{mosq.port}", "--broker-ca",
                 str(pki / "ca.crt"), "--broker-cert", str(pki / "client.crt"), "--broker-key",
                 str(pki / "client.key"), "--site-id", "tower-a", "--shared-group", "svc",
                 "--bridge-client-id", "svc-a-1")
    try:
        assert proc.stderr is not None
        log: list[str] = []
        for line in proc.stderr:
            log.append(line)
            if m := BRIDGE_READY.search(line):
                break
        else:
            raise AssertionError("".join(log))
        http, external, site = m.groups()
        assert external == f"mqtts://127.0.0.1:{mosq.port}"
        assert site == "tower-a"
        assert any("as svc-a-1" in line for line in log), log
        got: list[str] = []

        async def ring() -> None:
            async with aiomqtt.Client("127.0.0.1", mosq.port, identifier="resident-2",
                                      tls_context=client_ctx(pki, with_cert=True)) as r2:
                await r2.subscribe("sites/tower-a/users/2/#", qos=1)
                await r2.publish("sites/tower-a/calls/request/1", json.dumps(
                    {"household_number": "101", "request_id": "rq-cli"}), qos=1)
                async with asyncio.timeout(10):
                    async for message in r2.messages:
                        got.append(str(message.topic))
                        if got[-1].endswith("/calls/incoming"):
                            return

        asyncio.run(ring())
        assert got[-1] == "sites/tower-a/users/2/calls/incoming"
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=5) as r:
            assert json.loads(r.read())["data"]["healthy"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        mosq.stop()


@pytest.mark.parametrize("flags", [
    ["--site-id", "a"],                                                      # a bridge flag without the bridge
    ["--external-broker", "mqtt://127.0.0.1:1", "--site-id", "a/b"],          # a site id that is not one level
    ["--external-broker", "mqtt://127.0.0.1:1", "--broker-ca", "/nonexistent.crt"],
])
def test_bad_bridge_flags_exit_2(tmp_path, flags):
    proc = spawn(tmp_path, *flags)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        raise
    assert proc.returncode == 2, err
    assert "intercom-broker:" in err


def test_broker_password_from_the_environment(monkeypatch):
    """`mqtt://user@host` takes the password from INTERCOM_BROKER_PASSWORD (not visible in the process list)."""
    monkeypatch.setenv("INTERCOM_BROKER_PASSWORD", "s3cret")
    assert parse_broker_url("mqtt://svc%40a@127.0.0.1").password == "s3cret"
    assert parse_broker_url("mqtt://svc:inline@127.0.0.1").password == "inline"  # the URL's own wins
    assert parse_broker_url("mqtt://127.0.0.1").password is None  # no user: no password


async def test_mqtt_311_link_serves_a_call_once(tmp_path):
    """--broker-protocol 3.1.1 (RabbitMQ's mode) on Mosquitto: without no_local our own control messages come back
    and are dropped; the device hears 'answered' once, the other resident 'cancelled' once."""
    mosq = Mosquitto(tmp_path)
    await mosq.start()
    h = await started(tmp_path, f"mqtt://127.0.0.1:{mosq.port}", protocol="3.1.1", site_id="s")
    try:
        assert h.server.bridge.protocol == "3.1.1"
        inboxes, clients = {}, []
        for name, flt in (("d1", "sites/s/devices/1/#"), ("r2", "sites/s/users/2/#"), ("r3", "sites/s/users/3/#")):
            c = aiomqtt.Client("127.0.0.1", mosq.port, identifier=name)
            await c.__aenter__()
            await c.subscribe(flt, qos=1)
            clients.append(c)
            inboxes[name] = Inbox(c)
        try:
            call_id = (await h.start_call("1"))["call_id"]
            await inboxes["r2"].wait_for(lambda t, b: t.endswith("/calls/incoming"))
            await clients[1].publish("sites/s/users/2/calls/control", json.dumps(
                {"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
            await inboxes["d1"].wait_for(lambda t, b: b.get("call_info", {}).get("action") == "answered")
            await inboxes["r3"].wait_for(lambda t, b: b.get("call_info", {}).get("action") == "cancelled")
            await asyncio.sleep(0.5)  # room for duplicates to show up
            answered = [b for t, b, _ in inboxes["d1"].messages if t.endswith("/calls/control")
                        and b.get("call_info", {}).get("action") == "answered"]
            cancelled = [b for t, b, _ in inboxes["r3"].messages if t.endswith("/calls/control")
                         and b.get("call_info", {}).get("action") == "cancelled"]
            assert len(answered) == 1, (answered, cancelled)
            assert len(cancelled) == 1, (answered, cancelled)
            _, resp = await h.get(f"/api/mqtt/session?call_id={call_id}")
            assert resp["data"]["status"] == "connected"
        finally:
            for c, inbox in zip(clients, inboxes.values(), strict=True):
                await inbox.close()
                await c.__aexit__(None, None, None)
    finally:
        await closed(h)
        mosq.stop()


async def test_shared_group_refuses_an_mqtt_311_link(tmp_path):
    """$share needs MQTT 5: on a 3.1.1 link the instance does not subscribe (every instance would serve every
    request) and /healthz says why."""
    mosq = Mosquitto(tmp_path)
    await mosq.start()
    h = await started(tmp_path, f"mqtt://127.0.0.1:{mosq.port}", protocol="3.1.1", shared_group="g")
    try:
        body = await wait_health(h, 503)
        assert "--shared-group needs MQTT 5" in body["message"]
    finally:
        await closed(h)
        mosq.stop()
