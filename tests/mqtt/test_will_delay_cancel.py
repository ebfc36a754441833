"""An MQTT 5 delayed Will is never published after revocation, deletion of its principal, or the session's
resumption (over 3.1.1 or 5); a session that ends (3.1.1 clean takeover) publishes it once, at once."""

from __future__ import annotations

import asyncio
import time

from tests.support.harness import ADMIN
from tests.support.raw_mqtt import Raw, connack5, connect5, prop, props
from tests.support.security import login, secure_harness

WILL_DELAY_S = 2
WILL_TOPIC = "users/2/commands"  # resident 2 may publish there; the admin watches it


async def _watch(h):
    """The admin subscribed to the Will topic; returns (client, list of (arrival time, payload))."""
    import aiomqtt

    got: list[tuple[float, bytes]] = []
    watcher = aiomqtt.Client("127.0.0.1", h.server.mqtt_port, identifier="admin", username="admin", password=ADMIN)
    await watcher.__aenter__()
    await watcher.subscribe(WILL_TOPIC, qos=1)

    async def run() -> None:
        async for msg in watcher.messages:
            got.append((time.monotonic(), bytes(msg.payload)))  # type: ignore[arg-type]

    task = asyncio.create_task(run())
    return watcher, task, got


async def _dropped_with_delayed_will(h, t) -> float:
    """Resident 2 connects over MQTT 5 (Session Expiry 60 s, Will Delay 2 s), then its link drops."""
    raw = await Raw.open(h.server.mqtt_port)
    will = (WILL_TOPIC, b"will-fired", 1, False, props(prop(0x18, WILL_DELAY_S, "i")))
    got = await connack5(raw, connect5("resident-2", clean=False, properties=props(prop(0x11, 60, "i")),
                                       username="2", password=t["resident-2"].encode(), will=will))
    assert got is not None
    assert got[0] == 0
    raw.writer.transport.abort()  # no DISCONNECT: the Will is due after its delay
    await asyncio.sleep(0.2)
    return time.monotonic()


async def _settle(watcher, task) -> None:
    await asyncio.sleep(WILL_DELAY_S + 1.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await watcher.__aexit__(None, None, None)


async def test_the_control_case_a_dropped_link_publishes_the_will_after_its_delay(make_harness):
    """Nothing done after the drop: the Will arrives once, after about its delay (what the others cancel)."""
    h, t = await secure_harness(make_harness)
    watcher, task, got = await _watch(h)
    dropped = await _dropped_with_delayed_will(h, t)
    await _settle(watcher, task)
    assert [p for _, p in got] == [b"will-fired"]
    assert got[0][0] - dropped >= 1.0


async def test_revocation_cancels_the_pending_will(make_harness):
    """The token is re-issued while the Will waits: it is never published."""
    h, t = await secure_harness(make_harness)
    watcher, task, got = await _watch(h)
    await _dropped_with_delayed_will(h, t)
    status, _ = await h.post("/api/admin/residents/2/token", None, ADMIN)
    assert status == 200
    await _settle(watcher, task)
    assert got == []


async def test_deleting_the_principal_cancels_the_pending_will(make_harness):
    """The resident is deleted while the Will waits: it is never published."""
    h, t = await secure_harness(make_harness)
    watcher, task, got = await _watch(h)
    await _dropped_with_delayed_will(h, t)
    status, resp = await h.delete("/api/admin/residents/2", ADMIN)
    assert status == 200, resp
    await _settle(watcher, task)
    assert got == []


async def test_resuming_over_3_1_1_cancels_the_pending_will(make_harness):
    """The session is resumed by a 3.1.1 CONNECT (clean session 0) before the delay: no Will [MQTT-3.1.3-9]."""
    h, t = await secure_harness(make_harness)
    watcher, task, got = await _watch(h)
    await _dropped_with_delayed_will(h, t)
    async with h.mqtt(clean=False, **login(t, "resident-2")):
        await _settle(watcher, task)
    assert got == []


async def test_resuming_over_5_cancels_the_pending_will(make_harness):
    """The session is resumed by an MQTT 5 CONNECT (Clean Start 0) before the delay: no Will."""
    h, t = await secure_harness(make_harness)
    watcher, task, got = await _watch(h)
    await _dropped_with_delayed_will(h, t)
    raw = await Raw.open(h.server.mqtt_port)
    back = await connack5(raw, connect5("resident-2", clean=False, properties=props(prop(0x11, 60, "i")),
                                        username="2", password=t["resident-2"].encode()))
    assert back is not None
    assert back[0] == 0
    await _settle(watcher, task)
    await raw.close()
    assert got == []


async def test_a_3_1_1_clean_takeover_ends_the_session_and_publishes_the_will_once_at_once(make_harness):
    """A 3.1.1 CONNECT with clean session 1 ends the old session: its Will is due now, and only once."""
    h, t = await secure_harness(make_harness)
    watcher, task, got = await _watch(h)
    await _dropped_with_delayed_will(h, t)
    started = time.monotonic()
    async with h.mqtt(clean=True, **login(t, "resident-2")):
        await _settle(watcher, task)
    assert [p for _, p in got] == [b"will-fired"]
    assert got[0][0] - started < 1.0  # at the takeover, not when the old timer would have fired
