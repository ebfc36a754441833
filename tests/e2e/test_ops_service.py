"""Running as a service: the systemd unit (checked by systemd-analyze), the Containerfile, sd_notify, file modes."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.process import ROOT, ServerProcess

UNIT = ROOT / "contrib" / "systemd" / "intercom-broker.service"
ANALYZE = shutil.which("systemd-analyze")


def _runs(binary: str | None) -> bool:
    if binary is None:
        return False
    try:
        return subprocess.run([binary, "--version"], capture_output=True, timeout=10).returncode == 0
    except OSError:
        return False


def _unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's entry point (verify checks the binary exists)."""
    text = UNIT.read_text().replace("/opt/intercom-broker/bin/intercom-broker",
                                    str(Path(sys.executable).with_name("intercom-broker")))
    path = tmp_path / "intercom-broker.service"
    path.write_text(text)
    return path


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_unit_declares_a_notify_service_with_its_own_user_state_dir_and_reload():
    """Type=notify with the watchdog, a dedicated user, StateDirectory, kill -HUP reload, UMask 0077."""
    d = _directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert int(d["WatchdogSec"][0]) > 0
    assert d["User"] == ["intercom-broker"]
    assert d["StateDirectory"] == ["intercom-broker"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["UMask"] == ["0077"]
    assert "--data-dir /var/lib/intercom-broker" in d["ExecStart"][0]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "RestrictAddressFamilies",
                      "SystemCallFilter", "CapabilityBoundingSet"):
        assert hardening in d, hardening


@pytest.mark.skipif(not _runs(ANALYZE), reason="systemd-analyze cannot run here (Debian package: systemd)")
def test_systemd_analyze_verifies_the_unit_without_a_warning(tmp_path: Path):
    """`systemd-analyze verify` accepts the unit with no warning, and `security --offline` rates it OK (< 3)."""
    assert ANALYZE is not None
    unit = _unit_here(tmp_path)
    verify = subprocess.run([ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr
    bad = tmp_path / "bad.service"
    bad.write_text(unit.read_text().replace("ProtectHome=", "ProtectHomee="))
    typo = subprocess.run([ANALYZE, "verify", "--man=no", str(bad)], capture_output=True, text=True, timeout=60)
    assert "Unknown key" in typo.stderr  # the check above would see a mistake
    security = subprocess.run([ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                              timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout + security.stderr)
    assert m is not None, security.stdout[-500:]
    assert float(m.group(1)) < 3.0, m.group(0)


def test_the_containerfile_runs_the_readme_command():
    """The image installs with the README's pip command and runs its `.venv/bin/intercom-broker` as a non-root user."""
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/intercom-broker" in readme
    text = (ROOT / "Containerfile").read_text()
    assert re.search(r"RUN python3 -m venv \.venv && \.venv/bin/pip install --no-cache-dir '\.\[fast\]'", text)
    cmd = re.search(r'^CMD \["([^"]+)"', text, re.M)
    assert cmd is not None
    assert cmd.group(1) == ".venv/bin/intercom-broker"
    assert re.search(r"^USER intercom-broker$", text, re.M)
    assert "VOLUME" in text
    assert "HEALTHCHECK" in text
    for copied in ("pyproject.toml", "broker.yaml", "broker", "plugins", "http_api"):
        assert re.search(rf"^COPY .*\b{re.escape(copied)}\b", text, re.M), copied


class NotifySocket:
    """A datagram socket in the abstract namespace playing systemd's side of sd_notify."""

    def __init__(self) -> None:
        self.name = f"@intercom-test-{secrets.token_hex(6)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str = "1", timeout: float = 15.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        for msg in self.messages:
            if msg.get(key) == value:
                return msg
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(msg)
            if msg.get(key) == value:
                return msg
        raise AssertionError(f"no {key}={value} in {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
def test_sd_notify_ready_watchdog_reload_and_stopping(tmp_path: Path):
    """Under a notify socket the server sends READY=1 (with its MAINPID) once serving, WATCHDOG=1 every half
    WATCHDOG_USEC, RELOADING=1 then READY=1 on SIGHUP, and STOPPING=1 on SIGTERM before exiting 0."""
    notify = NotifySocket()
    server = ServerProcess(tmp_path, env={"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "400000"})
    try:
        server.start()
        assert server.proc is not None
        ready = notify.wait_for("READY")
        assert ready["MAINPID"] == str(server.proc.pid)
        assert "serving" in ready["STATUS"]
        started = time.monotonic()
        pings = 0
        while pings < 3:
            notify.messages.clear()
            notify.wait_for("WATCHDOG", timeout=5)
            pings += 1
        assert time.monotonic() - started < 5  # every 0.2 s when the loop is free
        server.proc.send_signal(signal.SIGHUP)
        notify.messages.clear()
        notify.wait_for("RELOADING")
        assert notify.wait_for("READY")["STATUS"] == "configuration reloaded"
        notify.messages.clear()
        assert server.stop() == 0
        assert notify.wait_for("STOPPING", timeout=2)["STATUS"] == "shutting down"
    finally:
        server.stop()
        notify.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
def test_data_dir_files_are_private_even_when_an_older_release_made_them(tmp_path: Path):
    """A data dir left 0755 with a 0644 intercom.db (as earlier releases made them) is tightened at start:
    the dir and its snapshots dir 0700, every file in it (databases, -wal/-shm) 0600; new files are private too."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    old_umask = os.umask(0o022)
    try:
        sqlite3.connect(data / "intercom.db").close()
    finally:
        os.umask(old_umask)
    (data / "intercom.db").chmod(0o644)
    (data / "snapshots").mkdir(mode=0o755)
    (data / "snapshots").chmod(0o755)
    (data / "NOTES.txt").write_text("an operator's file")
    (data / "NOTES.txt").chmod(0o644)
    server = ServerProcess(tmp_path, data_dir=data)
    try:
        server.start()
        assert server.http("POST", "/api/mqtt/call", {"device_id": "d0"})[0] == 200
        assert _mode(data) == 0o700
        names = sorted(p.name for p in data.iterdir())
        for name in ("intercom.db", "intercom.db-wal", "sessions.db", "sessions.db-wal", "snapshots"):
            assert name in names, names
        assert _mode(data / "NOTES.txt") == 0o644  # not the server's: left as it was
        for path in data.iterdir():
            if path.name == "NOTES.txt":
                continue
            assert _mode(path) == (0o700 if path.is_dir() else 0o600), (path.name, oct(_mode(path)))
    finally:
        assert server.stop() == 0
