"""Per-principal quota bookkeeping (broker/mqtt/quota.py) and the durable containers that report to it."""

from __future__ import annotations

from broker.mqtt.message import IncomingMessage, RetainedMessage
from broker.mqtt.quota import HELD, QUEUED, QuotaLimits, Quotas, owner_of, principal_of
from broker.mqtt.session_db import SessionDB
from broker.mqtt.session_persistence import DurableIncoming, DurableQueue, _Counted


def test_a_principal_is_the_client_id_before_its_suffix_and_anonymous_clients_are_their_own() -> None:
    """`resident-2/phone` counts against `resident-2`; an anonymous `sensor/1` only against itself."""
    assert principal_of("resident-2/phone", "2") == "resident-2" == principal_of("resident-2", "2")
    assert principal_of("sensor/1", None) == "sensor/1"
    assert owner_of("resident-2/x", "resident-2")
    assert owner_of("resident-2", "resident-2")
    assert not owner_of("resident-20", "resident-2")
    assert not owner_of("resident-20/x", "resident-2")


def test_bytes_add_up_per_principal_and_a_released_client_id_gives_its_share_back() -> None:
    """Two client ids of one principal share its quota; releasing one frees exactly what it held."""
    quotas = Quotas(QuotaLimits(held_bytes=100, queued_bytes=100, inflight_bytes=100))
    quotas.add("p", "p/a", HELD, 60)
    quotas.add("p", "p/b", HELD, 30)
    assert quotas.fits("p", HELD, 10)
    assert not quotas.fits("p", HELD, 11)
    assert quotas.fits("p", QUEUED, 100)
    assert quotas.fits("q", HELD, 100)
    quotas.release("p/a")
    assert quotas.used("p", HELD) == 30
    quotas.add("p", "p/b", HELD, -30)
    quotas.release("p/b")
    assert quotas.used("p", HELD) == 0
    assert not quotas._principals


def test_containers_report_what_they_hold_and_refuse_past_the_quota() -> None:
    """An offline queue drops (does not keep) a message past its principal's queued bytes; held QoS 2 is
    counted in and out, `clear()` included."""
    db = SessionDB(None)
    quotas = Quotas(QuotaLimits(held_bytes=1000, queued_bytes=250, inflight_bytes=1000))
    queue_a = DurableQueue(db, "p/a", 10, _Counted(quotas, "p", "p/a"))
    queue_b = DurableQueue(db, "p/b", 10, _Counted(quotas, "p", "p/b"))
    for queue in (queue_a, queue_b, queue_a):
        queue.put_nowait(RetainedMessage("t", b"x" * 100, 1))
    assert (queue_a.qsize(), queue_b.qsize()) == (1, 1)
    assert quotas.used("p", QUEUED) == 200
    queue_a.get_nowait()
    assert quotas.used("p", QUEUED) == 100
    held = DurableIncoming(db, "p/a", _Counted(quotas, "p", "p/a"))
    held[1] = IncomingMessage(1, "t", b"y" * 400, False)
    held[2] = IncomingMessage(2, "t", b"y" * 400, False)
    assert not held.fits(201)
    assert held.fits(200)
    held.pop(1)
    assert quotas.used("p", HELD) == 400
    held.clear()
    assert quotas.used("p", HELD) == 0
    db.close()
