"""Operations on the PostgreSQL store (`store.url`): history retention, backups (`pg_dump -Fc`) and restore
(`pg_restore`), scheduled backups and `intercom-broker admin`, against a real throwaway PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg not installed (pip install -e '.[scale]')")

from broker.migrations import POSTGRES_INTERCOM, latest  # noqa: E402
from broker.scale.lease import SiteLease  # noqa: E402
from broker.scale.pg_store import PgStore  # noqa: E402
from tests.mosquitto_helpers import free_port  # noqa: E402
from tests.postgres_helpers import needs_postgres, pg_url, postgres  # noqa: E402, F401 (fixtures)
from tests.support.process import ROOT  # noqa: E402
from tests.support.waits import until  # noqa: E402

pytestmark = [pytest.mark.slow, needs_postgres]

OLD, NEW = 1000.0, time.time() - 3600  # 1970 and an hour ago: with retention_days 30, OLD goes and NEW stays


def _cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, **(env or {})})


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0


def _fill_history(url: str, live: bool) -> None:
    """25 old calls (with `live`, one still ringing) with events and per-resident rows, 25 old door events and
    status changes; one recent ended call and one recent door event."""
    PgStore(url).close()  # the schema
    with psycopg.connect(url) as conn:
        for i in range(25):
            status = "ringing" if i == 0 and live else "ended"
            conn.execute("INSERT INTO calls (call_id, device_id, household_number, target_resident_ids, status,"
                         " start_time) VALUES (%s, '1', '101', '[\"2\"]', %s, %s)", (f"old{i}", status, OLD + i))
            conn.execute("INSERT INTO call_events (call_id, ts) VALUES (%s, %s)", (f"old{i}", OLD + i))
            conn.execute("INSERT INTO resident_calls (resident_id, call_id, start_time, outcome, seen)"
                         " VALUES ('2', %s, %s, 'missed', 0)", (f"old{i}", OLD + i))
            conn.execute("INSERT INTO door_events (ts, device_id) VALUES (%s, '1')", (OLD + i,))
            conn.execute("INSERT INTO device_status_history (device_id, ts, online) VALUES ('1', %s, 1)", (OLD + i,))
        conn.execute("INSERT INTO calls (call_id, device_id, household_number, target_resident_ids, status,"
                     " start_time) VALUES ('new', '1', '101', '[\"2\"]', 'ended', %s)", (NEW,))
        conn.execute("INSERT INTO door_events (ts, device_id) VALUES (%s, '1')", (NEW,))


# 1. retention ---------------------------------------------------------------------------------------------------

def test_prune_postgres_in_batches(pg_url: str) -> None:  # noqa: F811
    """The pruner on PostgreSQL: old ended calls (events, per-resident rows), door events and status history go,
    in batches; a live call and recent rows stay. The same rules as on sqlite (tests/e2e/test_history.py)."""
    from broker.scale.pg_ops import prune_postgres

    _fill_history(pg_url, live=True)
    assert prune_postgres(pg_url, cutoff=5000.0, status_cutoff=None, batch=7) == 24 + 25
    assert _count(pg_url, "SELECT COUNT(*) FROM device_status_history") == 25
    assert prune_postgres(pg_url, cutoff=None, status_cutoff=5000.0, batch=7) == 25
    with psycopg.connect(pg_url) as conn:
        calls = [r[0] for r in conn.execute("SELECT call_id FROM calls ORDER BY call_id")]
        assert calls == ["new", "old0"]  # old0 is ringing: a live call is never pruned
        assert conn.execute("SELECT call_id FROM call_events").fetchall() == [("old0",)]
        assert conn.execute("SELECT call_id FROM resident_calls").fetchall() == [("old0",)]
        assert conn.execute("SELECT ts FROM door_events").fetchall() == [(NEW,)]
        assert conn.execute("SELECT COUNT(*) FROM device_status_history").fetchone() == (0,)


async def test_retention_runs_on_a_postgres_box(make_harness: Any, pg_url: str,  # noqa: F811
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A box on PostgreSQL with history.retention_days prunes at start, off the loop, with the sqlite pruner's log
    line (not "retention is off"); recent calls stay and are served."""
    _fill_history(pg_url, live=False)
    caplog.set_level(logging.INFO, logger="intercom")
    h = await make_harness(store={"url": pg_url}, history={"retention_days": 30, "prune_batch": 7})
    await until(lambda: _count(pg_url, "SELECT COUNT(*) FROM device_status_history") == 0, 20, "status pruned")
    assert _count(pg_url, "SELECT COUNT(*) FROM calls") == 1
    assert _count(pg_url, "SELECT COUNT(*) FROM door_events") == 1
    assert _count(pg_url, "SELECT COUNT(*) FROM device_status_history") == 0
    await until(lambda: any("history retention: deleted" in r.getMessage() for r in caplog.records), 5, "log line")
    assert any("history retention: deleted 75 old rows" in r.getMessage() for r in caplog.records), caplog.text
    assert not any("retention and scheduled backups are off" in r.getMessage() for r in caplog.records)
    status, resp = await h.get("/api/calls?household_number=101")
    assert status == 200
    assert [c["call_id"] for c in resp["data"]] == ["new"]


# 2. backups and restore -------------------------------------------------------------------------------------------

async def _calls(h: Any, n: int) -> list[str]:
    made = []
    for _ in range(n):
        call_id = (await h.start_call("1"))["call_id"]
        assert (await h.post("/api/mqtt/end-session", {"call_id": call_id}))[0] == 200
        made.append(call_id)
    return made


def _pre_restore_dumps(data_dir: Path) -> list[Path]:
    return list(data_dir.glob("pre-restore-*/intercom.pgdump"))


async def test_backup_delete_restore_round_trip(make_harness: Any, tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    """Calls made on PostgreSQL, `intercom-broker backup` (pg_dump -Fc, checksummed manifest), the data deleted,
    `intercom-broker restore`: the calls and the directory are back. Refused while an instance holds the site's
    lease (unless --force), and for a dump newer than the release."""
    h = await make_harness(store={"url": pg_url})
    made = await _calls(h, 3)
    status, _ = await h.post("/api/admin/households", {"household_number": "909", "name": "backed up"})
    assert status in (200, 201)
    config = tmp_path / "test.yaml"
    bk = tmp_path / "bk"
    done = _cli("backup", bk, "--config", config)
    assert done.returncode == 0, done.stderr
    assert "3 calls" in done.stdout
    manifest = json.loads((bk / "manifest.json").read_text())
    meta = manifest["databases"]["intercom.pgdump"]
    assert meta["schema_version"] == latest(POSTGRES_INTERCOM)
    assert meta["rows"]["calls"] == 3
    assert meta["rows"]["households"] == 3
    assert (bk / "intercom.pgdump").read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    assert "intercom.pgdump" in manifest["files"]
    assert not (tmp_path / "intercom.db").exists()  # nothing on sqlite
    await h.server.stop()

    with psycopg.connect(pg_url) as conn:  # the data lost
        for table in ("calls", "call_events", "households", "residents", "devices"):
            conn.execute(f"DELETE FROM {table}")

    lease = SiteLease(pg_url, "", ttl_s=30)
    await lease.acquire()  # an instance serving the site
    try:
        refused = _cli("restore", bk, "--config", config)
        assert refused.returncode == 1
        assert "lease" in refused.stderr
        assert lease.holder in refused.stderr
        assert _count(pg_url, "SELECT COUNT(*) FROM calls") == 0
    finally:
        await lease.release()

    done = _cli("restore", bk, "--config", config)
    assert done.returncode == 0, done.stderr
    aside = _pre_restore_dumps(tmp_path)  # what the database held: kept
    assert len(aside) == 1
    assert aside[0].read_bytes()[:5] == b"PGDMP"
    with psycopg.connect(pg_url) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT call_id FROM calls")) == sorted(made)
        assert conn.execute("SELECT name FROM households WHERE household_number = '909'").fetchone() == ("backed up",)
        assert conn.execute("SELECT COUNT(*) FROM residents").fetchone() == (3,)
        assert conn.execute("SELECT COUNT(*) FROM call_events WHERE call_id = %s", [made[0]]).fetchone()[0] >= 2
    store = PgStore(pg_url)  # the restored database opens as a store: the schema version is the release's
    try:
        assert store.get_call(made[1]) is not None
    finally:
        store.close()

    plain = tmp_path / "plain.yaml"  # no store.url: a box on sqlite
    plain.write_text(f"server:\n  data_dir: {tmp_path / 'other'}\n")
    mismatch = _cli("restore", bk, "--config", plain)
    assert mismatch.returncode == 1
    assert "backup of a PostgreSQL store" in mismatch.stderr
    assert not (tmp_path / "other" / "intercom.db").exists()
    secret = _cli("restore", bk, "--config", plain, "--store-url", pg_url.replace("postgres@", "postgres:pw@"))
    assert secret.returncode == 1
    assert "PGPASSWORD" in secret.stderr

    meta["schema_version"] = latest(POSTGRES_INTERCOM) + 1  # a dump from a newer release
    (bk / "manifest.json").write_text(json.dumps(manifest))
    newer = _cli("restore", bk, "--config", config, "--force")
    assert newer.returncode == 1
    assert "newer" in newer.stderr

    # pg_restore failing mid-way (an operator's view on calls blocks its DROP): one transaction, nothing changes
    meta["schema_version"] = latest(POSTGRES_INTERCOM)
    (bk / "manifest.json").write_text(json.dumps(manifest))
    with psycopg.connect(pg_url) as conn:
        conn.execute("DELETE FROM calls WHERE call_id = %s", [made[0]])
        conn.execute("CREATE VIEW report AS SELECT call_id FROM calls")
    broken = _cli("restore", bk, "--config", config)
    assert broken.returncode == 1
    assert "pg_restore into" in broken.stderr, broken.stderr
    assert _count(pg_url, "SELECT COUNT(*) FROM calls") == 2  # as it was before the failed restore
    assert _count(pg_url, "SELECT COUNT(*) FROM households") == 3


async def test_scheduled_backup_on_postgres(make_harness: Any, tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    """backup.schedule on a PostgreSQL box writes a pg_dump backup at start (none recent) into backup.dir."""
    root = tmp_path / "backups"
    h = await make_harness(store={"url": pg_url}, backup={"dir": str(root), "schedule": "daily", "keep": 2})
    await _calls(h, 1)
    await until(lambda: bool(list(root.glob("*/manifest.json"))), 30, "a scheduled backup")
    found = list(root.glob("*/manifest.json"))
    manifest = json.loads(found[0].read_text())
    assert manifest["databases"]["intercom.pgdump"]["schema_version"] == latest(POSTGRES_INTERCOM)
    assert (found[0].parent / "intercom.pgdump").stat().st_size > 1000


def test_backup_without_pg_dump_says_so(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    """No pg_dump on PATH nor in /usr/lib/postgresql: one clear line, no half-written backup."""
    config = tmp_path / "broker.yaml"
    config.write_text(f"store:\n  url: {pg_url}\nserver:\n  data_dir: {tmp_path / 'data'}\n")
    done = _cli("backup", tmp_path / "bk", "--config", config,
                env={"PATH": str(Path(sys.executable).parent), "INTERCOM_PG_BIN_DIRS": str(tmp_path / "none")})
    assert done.returncode == 1
    assert "pg_dump not found" in done.stderr


# 3. the admin CLI -------------------------------------------------------------------------------------------------

def _site_csv(path: Path, n: int) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["household_number", "household_name", "type", "id", "name", "kind", "households", "emergency"])
        for i in range(n):
            w.writerow([f"{1000 + i}", f"Flat {i}", "resident", f"r{i}", f"Resident {i}", "", "", ""])
            w.writerow([f"{1000 + i}", f"Flat {i}", "device", f"d{i}", f"Door {i}", "door", "", ""])
    return path


def test_admin_import_round_trip_on_postgres(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    """`admin --config` with store.url imports a CSV into PostgreSQL (not into a local intercom.db), imports it
    again with no change, exports it back, lists, issues tokens; `--store-url` does the same; refused while an
    instance holds the lease; a clear error for an unreachable database."""
    data = tmp_path / "data"
    config = tmp_path / "broker.yaml"
    config.write_text(f"store:\n  url: {pg_url}\nserver:\n  data_dir: {data}\nauth:\n  pbkdf2_iterations: 1000\n")
    site = _site_csv(tmp_path / "site.csv", 20)
    first = _cli("admin", "--config", config, "import", site)
    assert first.returncode == 0, first.stderr
    assert "60 to create, 0 to change" in first.stdout
    assert _count(pg_url, "SELECT COUNT(*) FROM devices") == 20
    assert not (data / "intercom.db").exists()
    again = _cli("admin", "import", site, "--store-url", pg_url)
    assert again.returncode == 0, again.stderr
    assert "no changes: 0 to create, 0 to change, 60 unchanged" in again.stdout
    exported = tmp_path / "export.csv"
    assert _cli("admin", "--config", config, "export", "-o", exported).returncode == 0
    assert "no changes" in _cli("admin", "--config", config, "import", exported).stdout
    listed = _cli("admin", "--config", config, "list", "devices").stdout.splitlines()
    assert "device d7 household=1007 kind=door name=Door 7" in listed
    issued = _cli("admin", "--config", config, "token", "issue", "devices", "--all", "--out", tmp_path / "prov")
    assert issued.returncode == 0, issued.stderr
    assert len(list((tmp_path / "prov").glob("device-*.json"))) == 20
    assert _count(pg_url, "SELECT COUNT(*) FROM devices WHERE token_hash IS NOT NULL") == 20

    lease = SiteLease(pg_url, "", ttl_s=30)
    asyncio.run(lease.acquire())
    try:
        refused = _cli("admin", "--config", config, "list")
        assert refused.returncode == 1
        assert lease.holder in refused.stderr
        assert "--url" in refused.stderr
    finally:
        asyncio.run(lease.release())

    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    unusable = _cli("admin", "--store-url", nowhere, "list")
    assert unusable.returncode == 1
    assert "cannot open the store" in unusable.stderr
    assert "Traceback" not in unusable.stderr
