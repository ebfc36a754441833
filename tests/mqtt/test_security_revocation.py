"""Token revocation: re-issuing or deleting a principal ends its MQTT sessions (live and persistent)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.harness import ADMIN
from tests.support.raw_mqtt import CONNACK, SUBACK, Raw, connect, subscribe
from tests.support.security import secure_harness

# (collection, id, topic filter it may subscribe to)
PRINCIPALS = [("residents", "2", "users/2/#"), ("devices", "1", "devices/1/#")]
ROLE = {"residents": "resident", "devices": "device"}


async def _session(port: int, client_id: str, username: str, password: str, topic: str) -> Raw:
    """A persistent raw MQTT session subscribed to `topic` (QoS 1)."""
    raw = await Raw.open(port)
    assert await raw.connack(connect(client_id, username, password, clean=False)) == 0
    await raw.send(subscribe([(topic, 1)]))
    got = await raw.read_packet()
    assert got is not None
    assert got[0] == SUBACK
    assert got[1][-1] == 1
    return raw


async def _connack(port: int, client_id: str, username: str, password: str) -> tuple[int, int] | None:
    """(session present, return code) of a clean_session=0 CONNECT, or None if closed without CONNACK."""
    raw = await Raw.open(port)
    try:
        await raw.send(connect(client_id, username, password, clean=False))
        got = await raw.read_packet()
        if got is None or got[0] != CONNACK:
            return None
        # nothing queued for a discarded session may arrive
        late = await raw.read_packet(0.5) if got[1][1] == 0 else None
        assert late is None or late[0] >> 4 != 3, f"a message queued before the revocation arrived: {late!r}"
        return got[1][0] & 1, got[1][1]
    except TimeoutError:
        return got[1][0] & 1, got[1][1]
    finally:
        await raw.close()


async def _closed_within(raw: Raw, seconds: float) -> float | None:
    """Seconds until the broker closed `raw`, or None if it stayed open past `seconds`."""
    start = time.monotonic()
    return time.monotonic() - start if await raw.closed(seconds) else None


@pytest.mark.parametrize(("kind", "ident", "topic"), PRINCIPALS)
@pytest.mark.parametrize("action", ["reissue", "delete"])
async def test_revoking_a_token_ends_every_session_of_that_principal(make_harness, kind, ident, topic, action):
    """Re-issue or delete closes both live sessions of the principal within 1 s; the old token and session are gone."""
    h, tokens = await secure_harness(make_harness)
    who = f"{ROLE[kind]}-{ident}"
    old = tokens[who]
    port = h.server.mqtt_port
    main = await _session(port, who, ident, old, topic)
    second = await _session(port, f"{who}/tablet", ident, old, topic)
    bystander = await _session(port, "resident-3", "3", tokens["resident-3"], "users/3/#")
    try:
        if action == "reissue":
            status, resp = await h.post(f"/api/admin/{kind}/{ident}/token", None, ADMIN)
        else:
            status, resp = await h.delete(f"/api/admin/{kind}/{ident}", ADMIN)
        assert status == 200, resp
        took = await asyncio.gather(_closed_within(main, 1.0), _closed_within(second, 1.0))
        assert None not in took, f"sessions still open 1 s after {action}: {took}"
        # what the broker now sends to the principal is queued for no one
        h.server.broker.publish(topic.replace("#", "calls/incoming"), b'{"usersig": "after"}', qos=1)
        assert await _connack(port, who, ident, old) == (0, 5)
        if action == "reissue":
            new = str(resp["data"]["token"])
            assert await _connack(port, who, ident, new) == (0, 0), "the persistent session survived revocation"
        # another party is untouched
        h.server.broker.publish("users/3/calls/incoming", b"still-here", qos=1)
        got = await bystander.read_packet()
        assert got is not None
        assert got[0] >> 4 == 3
        assert got[1].endswith(b"still-here")
    finally:
        for raw in (main, second, bystander):
            await raw.close()


async def test_revoked_persistent_session_is_not_restored_after_restart(make_harness, tmp_path):
    """A revoked principal's offline persistent session is discarded from disk too, not only from memory."""
    h, tokens = await secure_harness(make_harness)
    port = h.server.mqtt_port
    raw = await _session(port, "resident-2", "2", tokens["resident-2"], "users/2/#")
    await raw.send(b"\xe0\x00")  # DISCONNECT: an offline persistent session remains
    assert await raw.closed(2.0)
    await raw.close()
    status, resp = await h.post("/api/admin/residents/2/token", None, ADMIN)
    assert status == 200, resp
    await h.server.stop()
    await h.server.start()
    assert await _connack(h.server.mqtt_port, "resident-2", "2", str(resp["data"]["token"])) == (0, 0)


async def test_token_check_in_flight_during_reissue_does_not_admit_the_old_token(make_harness):
    """A CONNECT whose token is being verified while that token is re-issued is refused, and stays refused."""
    h = await make_harness(auth={"allow_anonymous_on_loopback": False, "pbkdf2_iterations": 400_000})
    old = await h.token("residents", "2")  # never used yet: its first check runs PBKDF2 in a thread
    port = h.server.mqtt_port
    racer = await Raw.open(port)
    try:
        await racer.send(connect("resident-2", "2", old, clean=False))
        await asyncio.sleep(0.02)  # the check is under way in its worker thread
        status, resp = await h.post("/api/admin/residents/2/token", None, ADMIN)
        assert status == 200, resp
        got = await racer.read_packet(5.0)
        admitted = got is not None and got[0] == CONNACK and got[1][1] == 0
        assert not admitted or await racer.closed(1.0), "the old token's CONNECT was admitted after re-issue"
    finally:
        await racer.close()
    assert await _connack(port, "resident-2", "2", old) == (0, 5)
