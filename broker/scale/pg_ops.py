"""Operations on the PostgreSQL store (`store.url`): history retention, `pg_dump`/`pg_restore` backups, and
whether an instance serves the site now (its lease), for the offline commands that must not write under it.

- Retention runs `broker.core.retention.prune_batches` (the sqlite rules, statements and batches) over a
  `PgConnection` of its own, in the pruner's worker thread.
- A backup is `pg_dump -Fc` of the store's database (or of its schema, when `store.url` selects one with
  `options=-csearch_path=…`) taken in an exported snapshot: the row counts and schema version written to the
  manifest are read in the very snapshot the dump holds. The password comes from PGPASSWORD or ~/.pgpass, as
  for the store itself (libpq reads both).
- A restore is `pg_restore --clean --if-exists --no-owner --single-transaction`: it replaces the dumped
  tables in one transaction, so a failed restore leaves the database as it was.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from broker.core.retention import prune_batches
from broker.db_open import BackupError, StorageError
from broker.scale.pg_store import PgConnection, redact

__all__ = ["BIN_DIRS", "dump", "find_binary", "live_lease", "prune_postgres", "restore", "verify"]

# Where pg_dump/pg_restore are looked for after PATH (Debian/Ubuntu, then RHEL's layout); newest version first.
# INTERCOM_PG_BIN_DIRS (os.pathsep-separated globs) replaces this list.
BIN_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin")
_NOW = "extract(epoch from clock_timestamp())"  # the lease's clock (broker/scale/lease.py): the database's


def prune_postgres(url: str, cutoff: float | None, status_cutoff: float | None, batch: int,
                   pause_s: float = 0.0) -> int:
    """History retention on PostgreSQL: the sqlite pruner's rules and batches, over a connection of its own."""
    conn = PgConnection(url)  # errors are sqlite3's, as the pruner expects (it logs them and retries)
    try:
        return prune_batches(conn, cutoff, status_cutoff, batch, pause_s, begin="BEGIN")
    finally:
        conn.close()


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_binary(name: str) -> str:
    """`pg_dump` or `pg_restore`: from PATH, else the newest in the PostgreSQL install directories."""
    if found := shutil.which(name):
        return found
    env = os.environ.get("INTERCOM_PG_BIN_DIRS")
    patterns = env.split(os.pathsep) if env else list(BIN_DIRS)
    dirs = [d for pattern in patterns for d in glob.glob(pattern)]
    for directory in sorted(dirs, key=_version_key, reverse=True):
        if os.access(path := os.path.join(directory, name), os.X_OK):
            return path
    raise BackupError(f"{name} not found on PATH nor in {', '.join(patterns)}: install PostgreSQL's client "
                      "tools (apt-get install postgresql-client)")


def _run(args: list[str], what: str) -> None:
    env = {**os.environ, "PGCONNECT_TIMEOUT": os.environ.get("PGCONNECT_TIMEOUT", "10")}
    try:
        done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    except OSError as exc:
        raise BackupError(f"{what}: cannot run {args[0]}: {exc}") from exc
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise BackupError(f"{what} failed ({Path(args[0]).name} exit {done.returncode}): "
                          + (lines[0] if lines else "no message"))


def dump(url: str, dest: Path) -> dict[str, Any]:
    """`pg_dump -Fc` of the store into `dest` (0600); returns its schema version, schema and row counts."""
    pg_dump = find_binary("pg_dump")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        meta = _dump(url, dest, pg_dump)
    except BaseException:
        dest.unlink(missing_ok=True)  # no half-written dump left to be mistaken for a backup
        raise
    verify(dest)
    return meta


def _dump(url: str, dest: Path, pg_dump: str) -> dict[str, Any]:
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            # one snapshot for the dump and for what the manifest says about it
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = _one(conn, "SELECT pg_export_snapshot()")
            schema = _one(conn, "SELECT current_schema()")
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = "
                                                 "current_schema() ORDER BY tablename")]
            rows = {t: int(_one(conn, sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(t))))
                    for t in tables}
            version = int(_one(conn, "SELECT version FROM schema_version WHERE name = 'intercom'") or 0) \
                if "schema_version" in tables else 0
            only = ["--schema", str(schema)] if schema not in (None, "public") else []
            _run([pg_dump, "-Fc", "--snapshot", str(snapshot), *only, "-f", str(dest), "-d", url],
                 f"pg_dump of {redact(url)}")
            conn.execute("COMMIT")
    except psycopg.Error as exc:
        raise BackupError(f"cannot back up {redact(url)}: {str(exc).strip()}") from exc
    os.chmod(dest, 0o600)
    return {"store": redact(url), "schema": schema, "schema_version": version, "rows": rows}


def _one(conn: psycopg.Connection[Any], query: Any) -> Any:
    row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def verify(path: Path) -> None:
    """The dump reads back as an archive (its table of contents): a truncated or foreign file is refused."""
    _run([find_binary("pg_restore"), "--list", "-f", os.devnull, str(path)], f"verifying {path}")


def restore(url: str, path: Path) -> None:
    """Replace the store's tables with the dump's, in one transaction (a failure changes nothing)."""
    pg_restore = find_binary("pg_restore")
    _run([pg_restore, "--clean", "--if-exists", "--no-owner", "--single-transaction", "-d", url, str(path)],
         f"pg_restore into {redact(url)}")


def live_lease(url: str) -> tuple[str, str, float] | None:
    """(site, holder, seconds left) of a lease an instance holds on this database now, if any."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            if _one(conn, "SELECT to_regclass('site_leases')") is None:
                return None  # no instance ever served from it
            row = conn.execute(f"SELECT site_id, holder, expires_at - {_NOW} FROM site_leases WHERE expires_at > "
                               f"{_NOW} ORDER BY expires_at DESC LIMIT 1").fetchone()
    except psycopg.Error as exc:
        raise StorageError(f"cannot open the store {redact(url)}: {str(exc).strip()}") from exc
    return None if row is None else (str(row[0]), str(row[1]), float(row[2]))
