"""Another process holding intercom.db locked must not freeze the server: the loop keeps serving, writes
fail fast with 503 + Retry-After, and every call whose deadline passed during the lock ends after it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from broker.core.store import Store, StoreError, StoreUnavailable
from broker.core.write_gate import FIRST_PAUSE_S, MAX_PAUSE_S, WriteGate
from tests.support.process import ServerProcess, households

CALLS = 10
LOCK_S = 10.0
RING_S = 2.0

HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


def _healthz(port: int, timeout: float) -> bool:
    """/healthz answered in time: 200, or 503 saying why (the write gate is closed while the lock lasts)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            return r.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 503 and "write gate closed" in json.loads(exc.read())["message"]
    except (OSError, urllib.error.URLError):
        return False


def _post(port: int, path: str, body: bytes) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_write_gate_refuses_at_once_while_locked_and_reopens_after_a_probe(tmp_path: Path) -> None:
    """A write failing on a real lock closes the gate; writes then fail without sqlite until the
    (doubling) pause ends; a successful probe reopens it; other errors never close it."""
    store = Store(tmp_path / "intercom.db", busy_timeout_ms=0)
    clock = Clock()
    store.gate = WriteGate("intercom.db", clock=clock)
    row = {"household_number": "h1", "name": None, "created_at": 0.0}
    other = sqlite3.connect(tmp_path / "intercom.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreUnavailable) as first:
        store.put("households", row)
    assert first.value.status == 503
    assert first.value.headers == {"Retry-After": "1"}
    with pytest.raises(StoreUnavailable):
        store.put("households", row)
    assert store.gate.refused == 1  # refused by the gate, sqlite not asked
    clock.now += FIRST_PAUSE_S
    with pytest.raises(StoreUnavailable):  # the probe: still locked, the pause doubles
        store.put("households", row)
    clock.now += FIRST_PAUSE_S
    with pytest.raises(StoreUnavailable):
        store.put("households", row)
    assert store.gate.refused == 2
    other.execute("ROLLBACK")
    clock.now += MAX_PAUSE_S
    store.put("households", row)
    assert store.gate.is_open
    assert store.get("households", "h1") is not None
    with pytest.raises(StoreError) as dup:  # a constraint error is not "unavailable" and keeps the gate open
        store.put("households", row)
    assert not isinstance(dup.value, StoreUnavailable)
    assert store.gate.is_open
    other.close()
    store.close()


@pytest.mark.slow
def test_a_locked_database_does_not_freeze_the_server(tmp_path: Path) -> None:
    """During a 10 s BEGIN EXCLUSIVE: /healthz answers (<= 1 of 20 probes fail), keepalives are served,
    writes get 503 + Retry-After; after it every overdue call ends within a few seconds."""
    server = ServerProcess(tmp_path, {"calls": {"ring_timeout_s": RING_S},
                                      "site": {"households": households(CALLS + 1)}}).start()
    try:
        dropped = threading.Event()
        party = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="resident-r0", protocol=mqtt.MQTTv311)
        party.on_disconnect = lambda *_a: dropped.set()
        party.connect("127.0.0.1", server.mqtt_port, keepalive=2)
        party.loop_start()
        call_ids = []
        for i in range(CALLS):
            status, resp = server.http("POST", "/api/mqtt/call", {"device_id": f"d{i}"})
            assert status == 200, resp
            call_ids.append(resp["data"]["call_id"])

        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(server.data_dir / "intercom.db"),
                                   str(LOCK_S)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        failed = 0
        refused: tuple[int, dict[str, str]] | None = None
        for probe in range(20):
            failed += not _healthz(server.http_port, timeout=1.0)
            if probe == 10:  # the ring deadlines have passed; a new call needs a write
                refused = _post(server.http_port, "/api/mqtt/call", b'{"device_id": "d10"}')
            time.sleep(max(0.0, locked_at + (probe + 1) * LOCK_S / 20 - time.monotonic()))
        assert holder.wait(LOCK_S) == 0
        released_at = time.monotonic()

        assert failed <= 1, f"{failed} of 20 /healthz probes failed during the lock"
        assert refused is not None, refused
        assert refused[0] == 503, refused
        assert int(refused[1]["Retry-After"]) >= 1
        assert not dropped.is_set(), "an MQTT party with keepalive 2 s was dropped during the lock"

        pending = set(call_ids)
        while pending and time.monotonic() - released_at < 5.0:
            for call_id in list(pending):
                status, resp = server.http("GET", f"/api/mqtt/session?call_id={call_id}")
                if status == 200 and resp["data"]["status"] == "ended":
                    assert resp["data"]["end_reason"] == "timeout"
                    pending.discard(call_id)
            time.sleep(0.2)
        assert not pending, f"{len(pending)} overdue calls not ended 5 s after the lock was released"
        party.loop_stop()
        party.disconnect()
    finally:
        server.stop()
