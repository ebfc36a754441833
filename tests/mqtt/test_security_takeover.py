"""Duplicate CONNECT: simultaneous CONNECTs with one client id leave exactly one live connection [MQTT-3.1.4-2]."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.support.raw_mqtt import CONNACK, PINGREQ, PINGRESP, SUBACK, Raw, connect, subscribe

TRIALS = 30
RACERS = 5


async def _connack(raw: Raw, data: bytes) -> int | None:
    with contextlib.suppress(ConnectionError):
        await raw.send(data)
    with contextlib.suppress(TimeoutError):
        got = await raw.read_packet(3.0)
        return got[1][1] if got is not None and got[0] == CONNACK else None
    return None


async def _state(raw: Raw) -> str:
    """'closed' (the broker closed it), 'live' (answers PINGREQ) or 'stuck' (open, but no PINGRESP)."""
    try:
        await raw.send(PINGREQ)
        got = await raw.read_packet(1.0)
    except (ConnectionError, OSError):
        return "closed"
    except TimeoutError:
        return "stuck"
    return "closed" if got is None else "live" if got[0] == PINGRESP else "stuck"


async def _open(raws: list[Raw], settle_s: float = 3.0) -> list[tuple[Raw, str]]:
    """The connections still open once takeovers had time to finish (polled, at most `settle_s`)."""
    deadline = time.monotonic() + settle_s
    while True:
        states = await asyncio.gather(*(_state(r) for r in raws))
        still = [(raw, st) for raw, st in zip(raws, states, strict=True) if st != "closed"]
        if len(still) <= 1 or time.monotonic() > deadline:
            return still
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("clean", [True, False])
async def test_simultaneous_connects_with_one_client_id_leave_exactly_one(harness, clean):
    """In every one of 30 races of 5 CONNECTs with one client id, exactly one connection stays open and receives."""
    port = harness.server.mqtt_port
    for trial in range(TRIALS):
        cid = f"racer-{int(clean)}-{trial}"
        raws = list(await asyncio.gather(*(Raw.open(port) for _ in range(RACERS))))
        try:
            codes = await asyncio.gather(*(_connack(r, connect(cid, clean=clean)) for r in raws))
            assert 0 in codes, f"trial {trial}: no CONNECT accepted: {codes}"
            still = await _open(raws)
            assert [st for _, st in still] == ["live"], \
                f"trial {trial}: open connections {[st for _, st in still]} (CONNACKs {codes})"
            survivor = still[0][0]
            await survivor.send(subscribe([(f"race/{trial}", 1)]))
            got = await survivor.read_packet()
            assert got is not None
            assert got[0] == SUBACK
            harness.server.broker.publish(f"race/{trial}", b"to-the-survivor", qos=0)
            got = await survivor.read_packet()
            why = f"trial {trial}: the surviving connection got {got!r}, not the message"
            assert got is not None, why
            assert got[0] >> 4 == 3, why
            assert got[1].endswith(b"to-the-survivor"), why
        finally:
            await asyncio.gather(*(r.close() for r in raws))


async def test_a_reconnect_is_not_held_up_by_a_delivery_the_dropped_connection_never_acknowledged(harness):
    """A persistent client that drops while a QoS 1 message queued for it offline waits for its PUBACK gets its
    next CONNACK at once: the takeover does not wait for that PUBACK to time out (5 s)."""
    port = harness.server.mqtt_port
    sub = await Raw.connected(port, "resident-2", clean=False)
    assert await sub.subscribe([("users/2/x", 1)]) == [1]
    await sub.close(disconnect=True)
    harness.server.broker.publish("users/2/x", b"queued offline", qos=1)
    waits = []
    for _ in range(4):
        raw = await Raw.open(port)
        t0 = time.monotonic()
        assert await raw.connack(connect("resident-2", clean=False), 8.0) == 0
        waits.append(time.monotonic() - t0)
        assert (await raw.next_publish()).payload == b"queued offline"  # delivered, and again not acknowledged
        raw.abort()
    assert max(waits) < 1.0, waits
