"""`intercom-broker backup DIR` / `restore DIR`, and the scheduled backups of `backup.schedule`.

A backup is a directory: `intercom.db` and `sessions.db` copied with sqlite's online-backup API (each a
consistent snapshot of its file while the box keeps writing), the visitor snapshots, the generated TRTC dev key
if there is one, and `manifest.json` (time, release, schema versions, row counts, size and SHA-256 of every
file). Restore checks every checksum first, refuses while a box runs on the target data dir (its lock, see
`broker.data_lock`), moves what the data dir held aside to `pre-restore-<time>/`, then copies the files in.

With the store in PostgreSQL (`store.url`), `intercom.pgdump` (`pg_dump -Fc`, broker/scale/pg_ops.py) takes
intercom.db's place, with the same manifest, naming, rotation and checksums. Its restore also refuses while an
instance holds the site's lease (unless forced) and a dump newer than the release, keeps a dump of what the
database held in `pre-restore-<time>/`, then runs `pg_restore` in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from broker import data_lock
from broker.db_open import BackupError, StorageError

__all__ = ["BackupError", "make_backup", "prune_backups", "restore_backup", "run_schedule"]

log = logging.getLogger("intercom.backup")

DATABASES = ("intercom.db", "sessions.db")
PG_DUMP = "intercom.pgdump"  # the PostgreSQL store's dump, in intercom.db's place
EXTRA_FILES = ("trtc_dev_secret_key",)
SNAPSHOTS = "snapshots"
MANIFEST = "manifest.json"
FORMAT = 1
INTERVALS = {"hourly": 3600.0, "daily": 86400.0, "weekly": 7 * 86400.0}


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _copy_db(source: Path, dest: Path) -> dict[str, Any]:
    """Online backup of one sqlite file: a consistent copy however the box writes meanwhile."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    with contextlib.closing(sqlite3.connect(str(source), timeout=10)) as src, \
            contextlib.closing(sqlite3.connect(str(dest))) as dst:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        version = int(dst.execute("PRAGMA user_version").fetchone()[0])
        tables = [r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                                            "'sqlite_%' ORDER BY name")]
        rows = {t: int(dst.execute(f"SELECT COUNT(*) FROM [{t}]").fetchone()[0]) for t in tables}
    return {"schema_version": version, "rows": rows}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_backup(data_dir: Path, dest: Path, store_url: str | None = None) -> dict[str, Any]:
    """Back `data_dir` up into `dest` (new or empty), and the PostgreSQL store `store_url` if given (then a local
    intercom.db is not the store and is left out); returns the manifest."""
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"backup directory {dest} is not empty: give a new or empty directory")
    if store_url is None and not (data_dir / "intercom.db").exists():
        raise BackupError(f"no intercom.db in {data_dir}: is --data-dir right?")
    pg_ops = _pg_ops() if store_url is not None else None
    if pg_ops is not None:
        pg_ops.find_binary("pg_dump")  # missing: say so before writing anything
    _private_dir(dest)
    databases: dict[str, Any] = {}
    try:
        if pg_ops is not None and store_url is not None:
            databases[PG_DUMP] = pg_ops.dump(store_url, dest / PG_DUMP)
        for name in DATABASES:
            if name == "intercom.db" and store_url is not None:
                continue
            if (data_dir / name).exists():
                databases[name] = _copy_db(data_dir / name, dest / name)
        for name in EXTRA_FILES:
            if (data_dir / name).exists():
                shutil.copyfile(data_dir / name, dest / name)
                os.chmod(dest / name, 0o600)
        if (data_dir / SNAPSHOTS).is_dir():
            _private_dir(dest / SNAPSHOTS)
            for jpg in sorted((data_dir / SNAPSHOTS).glob("*.jpg")):
                with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
                    shutil.copyfile(jpg, dest / SNAPSHOTS / jpg.name)
    except (OSError, sqlite3.Error) as exc:
        raise BackupError(f"backup of {data_dir} into {dest} failed: {exc}") from exc
    files = {str(p.relative_to(dest)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(dest.rglob("*")) if p.is_file()}
    manifest = {"format": FORMAT, "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "release": _release(), "data_dir": str(data_dir.resolve()), "databases": databases, "files": files}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    os.chmod(dest / MANIFEST, 0o600)
    return manifest


def _pg_ops() -> Any:
    """broker.scale.pg_ops: psycopg, the `scale` extra, needed only with store.url."""
    try:
        from broker.scale import pg_ops
    except ImportError as exc:
        raise BackupError(f"store.url needs psycopg 3 ({exc}): pip install 'intercom-broker[scale]'") from exc
    return pg_ops


def _release() -> str:
    try:
        return metadata.version("intercom-broker")
    except metadata.PackageNotFoundError:
        return "unknown"


def read_manifest(source: Path) -> dict[str, Any]:
    """The backup's manifest, after checking every file it lists against its size and SHA-256."""
    try:
        manifest: dict[str, Any] = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{source} is not a backup: cannot read {MANIFEST} ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{source}: backup format {manifest.get('format')!r}, this release reads {FORMAT}")
    for name, meta in manifest["files"].items():
        path = source / name
        if not path.is_file() or path.stat().st_size != meta["bytes"] or _sha256(path) != meta["sha256"]:
            raise BackupError(f"{source}: {name} is missing or differs from the manifest: refusing to restore")
    return manifest


def restore_backup(source: Path, data_dir: Path, store_url: str | None = None, force: bool = False) -> Path | None:
    """Restore `source` into `data_dir` (and into the PostgreSQL store `store_url` when the backup holds its
    dump); returns where the previous files (and a dump of the database) were put, if anywhere. `force`: restore
    into the database even while an instance holds the site's lease."""
    manifest = read_manifest(source)
    pg_ops = _check_store(source, manifest, store_url, force)
    pid = data_lock.holder(data_dir)
    if pid is not None:
        raise BackupError(f"a box is running on {data_dir} (pid {pid}): stop it before restoring into it")
    _private_dir(data_dir)
    data_lock.acquire(data_dir)  # no box may start on it while the files are half copied
    try:
        moved = None
        if pg_ops is not None:  # the database first: a failure there leaves the data dir untouched
            moved = _aside_dir(data_dir)
            pg_ops.dump(store_url, moved / PG_DUMP)  # what the database held, never lost
            pg_ops.restore(store_url, source / PG_DUMP)  # one transaction: a failure changes nothing
        moved = _move_aside(data_dir, moved)
        for name in manifest["files"]:
            if name == PG_DUMP:
                continue
            target = data_dir / name
            _private_dir(target.parent)
            shutil.copyfile(source / name, target)
            os.chmod(target, 0o600)
    except OSError as exc:
        raise BackupError(f"restore of {source} into {data_dir} failed: {exc}") from exc
    finally:
        data_lock.release(data_dir)
    return moved


def _check_store(source: Path, manifest: dict[str, Any], store_url: str | None, force: bool) -> Any:
    """broker.scale.pg_ops when the backup is of a PostgreSQL store that may be restored into `store_url` now;
    None for a sqlite backup. Refuses a mismatch, a dump newer than this release and a served site."""
    dumped = PG_DUMP in manifest["files"]
    if not dumped:
        if store_url is not None:
            raise BackupError(f"{source} is a backup of a box's intercom.db, but store.url is set: restore it into a "
                              "data dir of a box without store.url")
        return None
    if store_url is None:
        raise BackupError(f"{source} is a backup of a PostgreSQL store: restore it with store.url set (--config "
                          "with store.url, or --store-url)")
    pg_ops = _pg_ops()
    from broker.migrations import POSTGRES_INTERCOM, latest

    have, known = int(manifest["databases"][PG_DUMP].get("schema_version") or 0), latest(POSTGRES_INTERCOM)
    if have > known:
        raise BackupError(f"{source} holds schema version {have}, newer than this release's {known}: restore it "
                          f"with the release that wrote it ({manifest.get('release')})")
    held = pg_ops.live_lease(store_url)
    if held is not None:
        site, holder, left = held
        if not force:
            raise BackupError(f"an instance serves site {site or '(default)'!r} from this database (lease held by "
                              f"{holder} for {left:.0f} s more): stop every instance of the site first, or --force")
        log.warning("restoring while %s holds the lease of site %r (--force)", holder, site)
    pg_ops.verify(source / PG_DUMP)  # pg_restore missing, or not an archive: said before anything is touched
    return pg_ops


def _aside_dir(data_dir: Path) -> Path:
    aside = data_dir / f"pre-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    for n in range(2, 100):  # two restores within a second: never into the first one's
        if not aside.exists():
            break
        aside = aside.with_name(f"{aside.name.split('.')[0]}.{n}")
    _private_dir(aside)
    return aside


def _move_aside(data_dir: Path, aside: Path | None = None) -> Path | None:
    """Move the data dir's files into `aside` (made if needed and there is something to move); returns it."""
    names = [n for db in DATABASES for n in (db, f"{db}-wal", f"{db}-shm")] + [*EXTRA_FILES, SNAPSHOTS]
    present = [data_dir / n for n in names if (data_dir / n).exists()]
    if not present:
        return aside
    aside = aside or _aside_dir(data_dir)
    for path in present:
        path.rename(aside / path.name)
    return aside


# scheduled backups ------------------------------------------------------------------------------------------

def prune_backups(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` scheduled backups (`root/<UTC time>/` with a manifest); the deleted."""
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).exists()) if root.is_dir() else []
    old = found[:-keep] if len(found) > keep else []
    for path in old:
        shutil.rmtree(path)
    return old


def _last_backup(root: Path) -> float | None:
    times = [p.stat().st_mtime for p in root.glob(f"*/{MANIFEST}")] if root.is_dir() else []
    return max(times, default=None)


async def run_schedule(data_dir: Path, root: Path, schedule: str, keep: int, store_url: str | None = None) -> None:
    """Back up every `schedule` (hourly/daily/weekly, counted from the newest backup) until cancelled; with
    `store_url`, the PostgreSQL store with pg_dump in place of intercom.db."""
    interval = INTERVALS[schedule]
    while True:
        last = _last_backup(root)
        wait = 0.0 if last is None else max(0.0, last + interval - time.time())
        await asyncio.sleep(wait)
        dest = root / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        try:
            await asyncio.to_thread(make_backup, data_dir, dest, store_url)
            deleted = await asyncio.to_thread(prune_backups, root, keep)
        except (StorageError, OSError) as exc:
            log.error("scheduled backup into %s failed: %s; retrying in an hour", dest, exc)
            await asyncio.sleep(3600)
            continue
        log.info("scheduled backup written to %s (%d older deleted)", dest, len(deleted))
