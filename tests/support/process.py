"""`python -m broker` as a subprocess on 127.0.0.1 free ports, for tests about files, locks and descriptors.

`ServerProcess` is any configuration; `ProcServer` the authenticated one-household site with admin token `ADMIN`:
start, SIGTERM, restart on the same data, kill -9, RSS, REST as the admin."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository: tests/support/process.py
READY = re.compile(r"intercom-broker serving mqtt://127\.0\.0\.1:(\d+) .*http://127\.0\.0\.1:(\d+)")

# The config Paho's interoperability suite expects (tests/mqtt/test_interop.py, test_paho_suite.py): no site, and
# anonymous clients may use every topic but test/nosubscribe (its subscribe-failure test expects SUBACK 0x80).
NOSUBSCRIBE = "test/nosubscribe"
INTEROP_CONFIG = {"acl": {"anonymous": {"publish": ["#"], "subscribe": ["#"], "deny": [NOSUBSCRIBE]}},
                  "site": {"households": []}}


def households(n: int) -> list[dict[str, Any]]:
    """`n` households, each with resident `r<i>` and device `d<i>`."""
    return [{"household_number": f"h{i}", "residents": [{"resident_id": f"r{i}"}], "devices": [{"device_id": f"d{i}"}]}
            for i in range(n)]


def _test_loop() -> str | None:
    """The kind of the running event loop (an async test's), so the server runs on the loop the test is for."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM (the service manager's stop), SIGKILL if it does not exit within `timeout`: the exit code."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def read_until_ready(proc: subprocess.Popen[str], ready: re.Pattern[str], log: list[str], what: str,
                     timeout: float) -> re.Match[str]:
    """Read a child's stderr into `log` until `ready` matches a line (its "serving" line), then keep draining it in
    a thread (so the child never blocks on a full pipe)."""
    assert proc.stderr is not None
    stderr = proc.stderr
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stderr.readline()
        if not line:
            raise AssertionError(f"{what} exited early with {proc.wait()}:\n{''.join(log)}")
        log.append(line)
        if m := ready.search(line):
            threading.Thread(target=lambda: log.extend(stderr), daemon=True).start()
            return m
    raise AssertionError(f"{what} did not report its port in time")


class ServerProcess:
    """One server process; stderr is kept line by line in `log` (and drained, so the child never blocks)."""

    def __init__(self, tmp_path: Path, config: dict[str, Any] | None = None, data_dir: Path | None = None,
                 preexec_fn: Callable[[], None] | None = None, env: dict[str, str] | None = None,
                 loop: str | None = None) -> None:
        self.config_path = tmp_path / "broker.yaml"
        raw = {"auth": {"pbkdf2_iterations": 1000}, "site": {"households": households(1)}, **(config or {})}
        self.config_path.write_text(yaml.safe_dump(raw))
        self.data_dir = data_dir or tmp_path / "data"
        self.preexec_fn = preexec_fn
        self.env = env or {}  # added to the test's environment (which loses INTERCOM_ADMIN_TOKEN)
        self.loop = loop  # `--loop`: asyncio or uvloop; None: the loop of the async test spawning it, else the default
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self.mqtt_port = self.http_port = 0

    def spawn(self) -> subprocess.Popen[str]:
        env = {**os.environ, "INTERCOM_TRTC_SECRET_KEY": "subprocess-test-secret"}
        env.pop("INTERCOM_ADMIN_TOKEN", None)
        env.update(self.env)
        loop = self.loop or _test_loop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "--config", str(self.config_path), "--host", "127.0.0.1",
             "--mqtt-port", "0", "--ws-port", "0", "--http-port", "0", "--data-dir", str(self.data_dir),
             *(["--loop", loop] if loop else [])],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            preexec_fn=self.preexec_fn)  # only setrlimit: safe before exec
        return self.proc

    def start(self, timeout: float = 20.0) -> ServerProcess:
        m = read_until_ready(self.spawn(), READY, self.log, "server", timeout)
        self.mqtt_port, self.http_port = int(m.group(1)), int(m.group(2))
        return self

    def run_to_exit(self, timeout: float = 20.0) -> tuple[int, str]:
        """Start, expecting the server to refuse: (exit code, stderr)."""
        proc = self.spawn()
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"server kept running:\n{err}") from None
        return proc.returncode, err

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (the service manager's stop); SIGKILL if it does not exit in time. The exit code."""
        return 0 if self.proc is None else stop_process(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL: nothing flushed, no shutdown hooks."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def rss_mb(self) -> float:
        """Resident set size of the server process in MiB (VmRSS from /proc)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def http(self, method: str, path: str, body: Any = None, timeout: float = 5.0,
             token: str | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


ADMIN = "proc-admin-token-0123456789abcdef"
SITE = {"households": [{"household_number": "101", "residents": [{"resident_id": "2"}, {"resident_id": "3"}],
                        "devices": [{"device_id": "1"}]}]}


class ProcServer(ServerProcess):
    """One server process over `data_dir`; `start()` again after `stop()` restarts it on the same data."""

    def __init__(self, tmp_path: Path, **sections: dict[str, Any]) -> None:
        super().__init__(tmp_path, {"site": SITE, **sections},
                         env={"INTERCOM_TRTC_SECRET_KEY": "proc-test-secret", "INTERCOM_ADMIN_TOKEN": ADMIN})

    def http(self, method: str, path: str, body: Any = None, timeout: float = 5.0,
             token: str | None = ADMIN) -> tuple[int, Any]:
        return super().http(method, path, body, timeout, token)

    def token(self, kind: str, ident: str) -> str:
        """Issue a token for a resident or device (the sync twin of `Harness.token`)."""
        status, resp = self.http("POST", f"/api/admin/{kind}/{ident}/token")
        assert status == 200, resp
        return str(resp["data"]["token"])
