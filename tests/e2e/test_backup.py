"""Backup while the box takes calls, restore into another data dir, start a box there: everything is back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import ROOT, ProcServer

pytestmark = pytest.mark.slow


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)


def _box(where: Path) -> ProcServer:
    where.mkdir()
    return ProcServer(where)


def _rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [tuple(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY 1")]


class Load(threading.Thread):
    """Calls from device 1, each with a resident's unlock attempt (station offline: a door event), then ended."""

    def __init__(self, server: ProcServer, resident_token: str) -> None:
        super().__init__(daemon=True)
        self.server, self.token = server, resident_token
        self.stop = threading.Event()
        self.calls = 0

    def run(self) -> None:
        for _ in range(400):
            if self.stop.is_set():
                return
            status, resp = self.server.http("POST", "/api/mqtt/call", {"device_id": "1"})
            assert status == 200, resp
            call_id = resp["data"]["call_id"]
            self.calls += 1
            status, _ = self.server.http("POST", "/api/doors/unlock", {"device_id": "1", "call_id": call_id},
                                         token=self.token)
            assert status == 503
            assert self.server.http("POST", "/api/mqtt/end-session", {"call_id": call_id})[0] == 200
            time.sleep(0.06)  # under the resident's per-principal REST rate


def test_backup_during_calls_restores_every_call_token_and_door_event(tmp_path: Path) -> None:
    """A backup taken mid-load is consistent; restore refuses the running box's dir, fills a new one, and a box
    started there serves every call, token and door event of the backup."""
    box = _box(tmp_path / "a").start()
    try:
        resident, device = box.token("residents", "2"), box.token("devices", "1")
        load = Load(box, resident)
        load.start()
        for _ in range(200):
            if load.calls >= 10:
                break
            time.sleep(0.05)
        done = _cli("backup", tmp_path / "bk", "--config", box.config_path, "--data-dir", box.data_dir)
        after = load.calls
        for _ in range(200):
            if load.calls >= after + 5:
                break
            time.sleep(0.05)
        load.stop.set()
        load.join(30)
        assert done.returncode == 0, done.stderr
        refused = _cli("restore", tmp_path / "bk", "--config", box.config_path, "--data-dir", box.data_dir)
        assert refused.returncode == 1
        assert f"(pid {box.proc.pid if box.proc else '?'})" in refused.stderr
        assert "stop it" in refused.stderr
    finally:
        box.stop()
    backup = tmp_path / "bk" / "intercom.db"
    with contextlib.closing(sqlite3.connect(backup)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    backed_calls = _rows(backup, "calls")
    assert 10 <= len(backed_calls) <= after < load.calls  # taken while calls were still being made
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert manifest["databases"]["intercom.db"]["rows"]["calls"] == len(backed_calls)
    assert set(manifest["files"]) >= {"intercom.db", "sessions.db"}

    other = _box(tmp_path / "b")
    done = _cli("restore", tmp_path / "bk", "--config", other.config_path, "--data-dir", other.data_dir)
    assert done.returncode == 0, done.stderr
    for table in ("calls", "call_events", "door_events", "residents", "devices", "households"):
        assert _rows(other.data_dir / "intercom.db", table) == _rows(backup, table), table
    other.start()
    try:
        listed, path = [], "/api/calls?limit=200"
        for _ in range(10):
            status, resp = other.http("GET", path)
            assert status == 200, resp
            listed += [c["call_id"] for c in resp["data"]]
            if len(resp["data"]) < 200:
                break
            path = f"/api/calls?limit=200&cursor={_next_cursor(other, path)}"
        assert sorted(listed) == sorted(r[0] for r in backed_calls)
        assert other.http("GET", "/api/calls?limit=1", token=resident)[0] == 200
        assert other.http("GET", "/api/calls?limit=1", token=device)[0] == 200
        assert other.http("GET", "/api/calls?limit=1", token=resident[:-4] + "AAAA")[0] == 401
        status, resp = other.http("GET", "/api/doors/events?limit=500")
        assert status == 200
        assert len(resp["data"]) == len(_rows(backup, "door_events")) >= 10
    finally:
        other.stop()


def _next_cursor(server: ProcServer, path: str) -> str:
    import urllib.request

    from tests.support.process import ADMIN

    req = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}",
                                 headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return str(r.headers["X-Next-Cursor"])


def test_a_tampered_backup_is_refused(tmp_path: Path) -> None:
    """restore checks every file against the manifest before touching the data dir."""
    box = _box(tmp_path / "a").start()
    box.stop()
    assert _cli("backup", tmp_path / "bk", "--data-dir", box.data_dir).returncode == 0
    with (tmp_path / "bk" / "intercom.db").open("r+b") as f:
        f.seek(200)
        f.write(b"\xff\xff")
    done = _cli("restore", tmp_path / "bk", "--data-dir", tmp_path / "new")
    assert done.returncode == 1
    assert "intercom.db is missing or differs" in done.stderr
    assert not (tmp_path / "new" / "intercom.db").exists()


async def test_scheduled_backups_keep_the_newest(make_harness: Any, tmp_path: Path) -> None:
    """backup.schedule writes a backup at start when none is recent, and only `keep` are kept."""
    from broker.backup import make_backup, prune_backups

    root = tmp_path / "backups"
    for stamp in ("20200101T000000Z", "20200102T000000Z"):
        (root / stamp).mkdir(parents=True)
        (root / stamp / "manifest.json").write_text("{}")
        old = time.time() - 10 * 86400
        import os

        os.utime(root / stamp / "manifest.json", (old, old))
    h = await make_harness(backup={"dir": str(root), "schedule": "daily", "keep": 2})
    for _ in range(100):
        kept = sorted(p.name for p in root.iterdir())
        if len(kept) == 2 and "20200101T000000Z" not in kept:
            break
        await asyncio.sleep(0.05)
    assert kept[0] == "20200102T000000Z"
    assert kept[1] > "2026"
    assert json.loads((root / kept[1] / "manifest.json").read_text())["databases"]["intercom.db"]["schema_version"] > 0
    await h.server.stop()
    assert prune_backups(root, 1) == [root / "20200102T000000Z"]
    assert make_backup is not None
