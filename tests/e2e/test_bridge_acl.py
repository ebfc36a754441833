"""Identity on the external broker (issue 23 item 1): `intercom-broker admin broker-acl --mosquitto` writes the
users, passwords and topic ACL a site needs, and a real Mosquitto loaded with them refuses anonymous and foreign
clients and keeps every resident and device to its own topics, while the bridged call service works."""

from __future__ import annotations

import asyncio
import csv
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import aiomqtt
import pytest

from broker.admin_cli import admin_main
from broker.app import build_services
from broker.bridge import BridgedServer, BridgePublisher
from broker.scale.broker_acl import broker_users, mosquitto_hash, rabbitmq_regex
from tests.mosquitto_helpers import Mosquitto, needs_mosquitto
from tests.support.harness import Harness, make_settings
from tests.support.inbox import Inbox

SITE = "a"


def seed(data: Path) -> None:
    """The directory of make_settings (101: residents 2, 3, device 1; 102: resident 4, device 5) in `data`."""
    svc = build_services(make_settings(data), BridgePublisher())
    svc.calls.close()
    svc.store.close()


@pytest.fixture
def acl_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data, out = tmp_path / "data", tmp_path / "broker-acl"
    data.mkdir()
    seed(data)
    monkeypatch.chdir(tmp_path)  # no ./broker.yaml: the admin command takes the defaults and --data-dir
    assert admin_main(["broker-acl", "--mosquitto", "--rabbitmq", "--site-id", SITE, "--data-dir", str(data),
                       "--out", str(out)]) == 0
    return out


def credentials(acl_dir: Path) -> dict[str, str]:
    with (acl_dir / "credentials.csv").open(newline="") as f:
        return {row["user"]: row["password"] for row in csv.DictReader(f)}


@pytest.fixture
async def site(tmp_path: Path, acl_dir: Path) -> AsyncIterator[tuple[Mosquitto, Harness, dict[str, str]]]:
    conf = "".join(line + "\n" for line in (acl_dir / "mosquitto.conf").read_text().splitlines()
                   if line and not line.startswith("#"))
    mosq = Mosquitto(tmp_path, general=conf)
    await mosq.start()
    creds = credentials(acl_dir)
    url = f"mqtt://{quote('service-call@a', safe='')}:{quote(creds['service-call@a'], safe='')}@127.0.0.1:{mosq.port}"
    server = BridgedServer(make_settings(tmp_path / "data"), url, site_id=SITE)
    await server.start(connect_timeout=5)
    h = Harness(server, aiohttp.ClientSession())  # type: ignore[arg-type]
    try:
        yield mosq, h, creds
    finally:
        await h.http.close()
        await server.stop()
        mosq.stop()


def client(mosq: Mosquitto, user: str | None, creds: dict[str, str], password: str | None = None) -> aiomqtt.Client:
    pw = password if password is not None else creds.get(user or "")
    return aiomqtt.Client("127.0.0.1", mosq.port, identifier=f"c-{user or 'anon'}", username=user, password=pw)


async def session_status(h: Harness, call_id: str) -> str:
    _, resp = await h.get(f"/api/mqtt/session?call_id={call_id}")
    return str(resp["data"]["status"])


@needs_mosquitto
async def test_anonymous_and_foreign_clients_are_refused_by_the_broker(site):
    mosq, h, creds = site
    assert h.server.bridge.connected.is_set(), h.server.bridge.down_reason()
    for user, password in ((None, None), ("evil", "evil"), ("resident-2@a", "not-the-password")):
        with pytest.raises(aiomqtt.MqttError):
            async with client(mosq, user, creds, password):
                pass


@needs_mosquitto
async def test_residents_and_devices_act_only_as_themselves(site):
    """Resident 4 (another household) can neither answer resident 2's call nor read resident 2's topics;
    device 1 and resident 2, with their own credentials, place and answer the call through the bridge."""
    mosq, h, creds = site
    async with client(mosq, "device-1@a", creds) as dev, client(mosq, "resident-2@a", creds) as r2, \
            client(mosq, "resident-4@a", creds) as r4:
        await dev.subscribe("sites/a/devices/1/#", qos=1)
        await r2.subscribe("sites/a/users/2/#", qos=1)
        # Mosquitto 2.0 grants the SUBACK but its `read` ACL holds back every message (checked below)
        await r4.subscribe("sites/a/users/2/#", qos=1)
        dev_in, r2_in, r4_in = Inbox(dev), Inbox(r2), Inbox(r4)
        try:
            await dev.publish("sites/a/calls/request/1", json.dumps({"household_number": "101", "request_id": "q"}),
                              qos=1)
            _, ring = await r2_in.wait_for(lambda t, b: t.endswith("/calls/incoming"))
            call_id = ring["call_id"]
            answer = json.dumps({"call_info": {"call_id": call_id, "action": "answered"}})
            await r4.publish("sites/a/users/2/calls/control", answer, qos=1)  # resident 4 posing as resident 2
            await r4.publish("sites/a/devices/1/calls/control", answer, qos=1)  # ... and as the device
            await asyncio.sleep(0.7)
            assert await session_status(h, call_id) == "ringing"
            assert r4_in.messages == []  # neither the ring nor its own forged answers reached resident 4
            await r2.publish("sites/a/users/2/calls/control", answer, qos=1)
            _, body = await dev_in.wait_for(lambda t, b: b.get("call_info", {}).get("action") == "answered")
            assert body["resident_id"] == "2"
            assert await session_status(h, call_id) == "connected"
        finally:
            for inbox in (dev_in, r2_in, r4_in):
                await inbox.close()


def test_generated_users_follow_the_embedded_acl():
    """The same rules as plugins.acl's DEFAULT_ACL, under the mount point; ids that are not a level are left out."""
    users = {u.name: u for u in broker_users(
        [{"resident_id": "2", "household_number": "101"}, {"resident_id": "x/y", "household_number": "101"}],
        [{"device_id": "1", "household_number": "101"}, {"device_id": "5", "household_number": "102"}], "a")}
    assert set(users) == {"service-call@a", "resident-2@a", "device-1@a", "device-5@a"}
    assert users["service-call@a"].publish == ["sites/a/#"]
    r2 = users["resident-2@a"]
    assert "sites/a/users/2/calls/control" in r2.publish
    assert "sites/a/devices/1/status" in r2.subscribe
    assert "sites/a/devices/5/status" not in r2.subscribe
    assert all(t.startswith("sites/a/") for u in users.values() for t in u.publish + u.subscribe)


def test_rabbitmq_topic_regex_matches_routing_keys():
    """`/` is `.` in RabbitMQ routing keys; `#` allows the level and everything below, nothing beside it."""
    rx = re.compile(rabbitmq_regex(["sites/a/users/2/#", "sites/a/devices/1/status"]))
    assert rx.match("sites.a.users.2.calls.incoming")
    assert rx.match("sites.a.users.2.#")
    assert rx.match("sites.a.devices.1.status")
    assert not rx.match("sites.a.users.22.calls")
    assert not rx.match("sites.a.users.*.#")
    assert not rx.match("sites.b.users.2.calls")
    assert not rx.match("sites.a.devices.1.status.x")


def test_passwords_are_kept_when_generated_again(acl_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = credentials(acl_dir)
    assert admin_main(["broker-acl", "--mosquitto", "--site-id", SITE, "--data-dir", str(acl_dir.parent / "data"),
                       "--out", str(acl_dir)]) == 0
    assert credentials(acl_dir) == before
    assert len(before) == 6
    assert (acl_dir / "credentials.csv").stat().st_mode & 0o077 == 0


def test_mosquitto_hash_format() -> None:
    parts: list[Any] = mosquitto_hash("pw", salt=b"\0" * 12).split("$")
    assert parts[:3] == ["", "7", "101"]
    assert len(parts) == 5
