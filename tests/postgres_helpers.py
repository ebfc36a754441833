"""A real PostgreSQL (Debian's postgresql 15) on a loopback port in a tmp dir, for the scale-out tests.

`postgres`: one server per test session (initdb + pg_ctl start, ~2 s), stopped at the end; `pg_url`: a fresh,
empty database on it per test. Skipped, with the reason, where the binaries or psycopg are missing
(CI installs `postgresql` with apt: .ci/run). As root, the server runs as the `postgres` user (initdb refuses root).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mosquitto_helpers import free_port

PG_BIN = next((Path(f"/usr/lib/postgresql/{v}/bin") for v in (15, 16, 17)
               if Path(f"/usr/lib/postgresql/{v}/bin/initdb").exists()), None)
try:
    import psycopg
except ImportError:  # the `scale` extra is not installed
    psycopg = None  # type: ignore[assignment]

_why = ("PostgreSQL binaries not found (apt-get install postgresql)" if PG_BIN is None
        else "psycopg not installed (pip install -e '.[scale]')" if psycopg is None else "")
needs_postgres = pytest.mark.skipif(bool(_why), reason=_why or "-")


def _as_owner() -> list[str]:
    """Run as `postgres` when we are root (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
    return [runuser, "-u", "postgres", "--"]


class Postgres:
    """A PostgreSQL server we started: `url(db)` connects over TCP on 127.0.0.1 as the `postgres` role."""

    def __init__(self) -> None:
        assert PG_BIN is not None
        self.dir = Path(tempfile.mkdtemp(prefix="intercom-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.log = self.dir / "server.log"

    def start(self) -> None:
        assert PG_BIN is not None
        prefix = _as_owner()
        if prefix:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        subprocess.run([*prefix, str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        opts = (f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off"
                " -c full_page_writes=off -c max_connections=50")
        subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                        "-t", "60", "-o", opts, "start"], check=True, capture_output=True, timeout=90)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        """A fresh empty database; returns its URL."""
        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        assert PG_BIN is not None
        subprocess.run([*_as_owner(), str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if _why:
        pytest.skip(_why)
    server = Postgres()
    try:
        server.start()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = server.log.read_text() if server.log.exists() else ""
        shutil.rmtree(server.dir, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc}; {getattr(exc, 'stderr', b'')!r} {log}") from exc
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    return postgres.create_database()
