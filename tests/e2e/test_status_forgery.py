"""A device's Will or publish on its status topic goes through the status rules: the retained status always
equals `GET /api/devices/{id}/status`, and only the server's message (`origin: server`) is ever seen there."""

from __future__ import annotations

import asyncio
import json

import aiomqtt

from tests.support.harness import ADMIN
from tests.support.raw_mqtt import Raw, connack5, connect, connect5, props
from tests.support.security import login, secure_harness
from tests.support.waits import quiet

FORGED = json.dumps({"origin": "server", "online": True, "battery": 100, "properties": {"fw": "evil"}}).encode()


async def _retained(h, topic: str = "devices/1/status") -> dict | None:
    """The retained message a new subscriber (the admin) gets on `topic`."""
    async with aiomqtt.Client("127.0.0.1", h.server.mqtt_port, identifier="admin/retained", username="admin",
                              password=ADMIN) as c:
        await c.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(1.0):
                async for msg in c.messages:
                    return json.loads(msg.payload) if msg.payload else None  # type: ignore[arg-type]
        except TimeoutError:
            return None
    return None


async def _rest(h) -> dict:
    status, resp = await h.get("/api/devices/1/status", ADMIN)
    assert status == 200, resp
    return resp["data"]


async def _consistent(h, timeout: float = 3.0) -> tuple[dict | None, dict]:
    """Wait until the retained status equals the REST one (or time out); return both."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        retained, rest = await _retained(h), await _rest(h)
        body = dict(retained or {})
        if (body.pop("origin", None) == "server" and body == rest) or loop.time() > deadline:
            return retained, rest
        await asyncio.sleep(0.2)


class Watch:
    """The admin subscribed to `devices/1/status`: every message seen there."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.seen: list[dict] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.client.messages:
            if msg.payload:
                self.seen.append(json.loads(msg.payload))  # type: ignore[arg-type]


async def _watch(h) -> Watch:
    c = aiomqtt.Client("127.0.0.1", h.server.mqtt_port, identifier="admin/watch", username="admin", password=ADMIN)
    await c.__aenter__()
    await c.subscribe("devices/1/status", qos=1)
    return Watch(c)


async def _check(h, watch: Watch) -> None:
    retained, rest = await _consistent(h)
    assert retained is not None, retained
    assert retained.pop("origin") == "server", retained
    assert retained == rest, (retained, rest)
    assert rest["properties"] == {"fw": "1"}
    assert rest["online"] is False
    watch.task.cancel()
    await asyncio.gather(watch.task, return_exceptions=True)
    await watch.client.__aexit__(None, None, None)
    assert all(m.get("origin") == "server" for m in watch.seen), watch.seen
    assert not [m for m in watch.seen if m.get("properties", {}).get("fw") == "evil"], watch.seen


async def _setup(make_harness):
    h, t = await secure_harness(make_harness)
    status, _ = await h.post("/api/mqtt/device/status", {"device_id": "1", "online": False, "battery": 40,
                                                        "properties": {"fw": "1"}}, ADMIN)
    assert status == 200
    return h, t


async def test_a_3_1_1_will_cannot_forge_the_retained_status(make_harness):
    """A retained 3.1.1 Will `{"origin":"server",...,"fw":"evil"}` on devices/1/status: the retained status
    still equals REST, the Will's `origin` is not taken, its fields are merged (or refused) like a publish."""
    h, t = await _setup(make_harness)
    watch = await _watch(h)
    raw = await Raw.open(h.server.mqtt_port)
    creds = login(t, "device-1")
    code = await raw.connack(connect("device-1", username=creds["username"], password=creds["password"],
                                     will=("devices/1/status", FORGED, 1, True)))
    assert code == 0
    raw.writer.transport.abort()
    await quiet(0.5)  # the forged Will is handled and nobody sees it
    await _check(h, watch)


async def test_an_mqtt5_will_cannot_forge_the_retained_status(make_harness):
    """The same Will from an MQTT 5 device (no delay)."""
    h, t = await _setup(make_harness)
    watch = await _watch(h)
    raw = await Raw.open(h.server.mqtt_port)
    got = await connack5(raw, connect5("device-1", username="1", password=t["device-1"].encode(),
                                       will=("devices/1/status", FORGED, 1, True, props())))
    assert got is not None
    assert got[0] == 0
    raw.writer.transport.abort()
    await quiet(0.5)  # the forged Will is handled and nobody sees it
    await _check(h, watch)


async def test_a_publish_claiming_origin_server_goes_through_the_status_rules(make_harness):
    """A device publishing `{"origin":"server",...}` retained on its status topic is not taken as the server's:
    nobody sees it as sent, and the retained status equals REST."""
    h, t = await _setup(make_harness)
    watch = await _watch(h)
    async with aiomqtt.Client("127.0.0.1", h.server.mqtt_port, identifier="device-1", username="1",
                              password=t["device-1"]) as dev:
        await dev.publish("devices/1/status", FORGED, qos=1, retain=True)
        await quiet(0.5)  # the forged publish is handled and nobody sees it as the server's
    await quiet(0.3)
    await _check(h, watch)


async def test_a_devices_will_is_merged_like_its_publish(make_harness):
    """A Will `{"battery": 5}` is a status report: merged into the stored status, published by the server."""
    h, t = await _setup(make_harness)
    watch = await _watch(h)
    raw = await Raw.open(h.server.mqtt_port)
    creds = login(t, "device-1")
    code = await raw.connack(connect("device-1", username=creds["username"], password=creds["password"],
                                     will=("devices/1/status", b'{"battery": 5}', 1, True)))
    assert code == 0
    raw.writer.transport.abort()
    for _ in range(50):
        if (await _rest(h))["battery"] == 5:
            break
        await asyncio.sleep(0.1)
    rest = await _rest(h)
    assert rest["battery"] == 5
    assert rest["properties"] == {"fw": "1"}
    retained, rest = await _consistent(h)
    assert retained is not None
    assert retained.pop("origin") == "server"
    assert retained == rest
    watch.task.cancel()
    await asyncio.gather(watch.task, return_exceptions=True)
    await watch.client.__aexit__(None, None, None)
    assert watch.seen, watch.seen
    assert all(m.get("origin") == "server" for m in watch.seen), watch.seen
