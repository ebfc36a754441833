"""A real Mosquitto on a loopback port in a tmp dir, for bridge-mode tests: plain, TLS, with an ACL and passwords."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto binary not found (apt-get install mosquitto)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str = "mosquitto", tries: int = 200) -> None:
    for _ in range(tries):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    proc.kill()
    proc.wait(timeout=5)
    raise RuntimeError(f"{what} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class Mosquitto:
    """A Mosquitto process we started, on a fixed port, that a test may restart.

    `listener`: the lines after `listener PORT 127.0.0.1` (TLS files, require_certificate); `general`: global
    lines (allow_anonymous, acl_file, password_file). Default: an open plain listener, as before.
    """

    def __init__(self, tmp_path: Path, listener: str = "", general: str = "allow_anonymous true\n") -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.listener = listener
        self.general = general
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        conf = self.tmp_path / f"mosquitto-{self.port}.conf"
        # as root Mosquitto drops to user `mosquitto`, which cannot read the 0700 tmp dir's certificates and ACL
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"per_listener_settings false\n{user}{self.general}set_tcp_nodelay true\npersistence false\n"
                        f"log_dest stderr\nlistener {self.port} 127.0.0.1\n{self.listener}")
        assert MOSQUITTO is not None
        log = (self.tmp_path / f"mosquitto-{self.port}.log").open("ab")
        # Popen returns at once; the process is stopped by its PID from synchronous teardown
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)  # noqa: ASYNC220
        log.close()
        await wait_listening(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
