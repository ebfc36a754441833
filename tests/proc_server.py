"""`python -m broker` as a subprocess on free 127.0.0.1 ports: start, SIGTERM, restart, RSS, REST."""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"intercom-broker serving mqtt://127\.0\.0\.1:(\d+) .*http://127\.0\.0\.1:(\d+)")
ADMIN = "proc-admin-token-0123456789abcdef"
SITE = {"households": [{"household_number": "101", "residents": [{"resident_id": "2"}, {"resident_id": "3"}],
                        "devices": [{"device_id": "1"}]}]}


class ProcServer:
    """One server process over `data_dir`; `start()` again after `stop()` restarts it on the same data."""

    def __init__(self, tmp_path: Path, **sections: dict[str, Any]) -> None:
        self.data_dir = tmp_path / "data"
        self.config = tmp_path / "broker.yaml"
        self.config.write_text(yaml.safe_dump({"auth": {"pbkdf2_iterations": 1000}, "site": SITE, **sections}))
        self.proc: subprocess.Popen[str] | None = None
        self.mqtt_port = self.http_port = 0
        self.log: list[str] = []

    def start(self, timeout: float = 15.0) -> ProcServer:
        env = {**os.environ, "INTERCOM_TRTC_SECRET_KEY": "proc-test-secret", "INTERCOM_ADMIN_TOKEN": ADMIN}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "--config", str(self.config), "--host", "127.0.0.1", "--mqtt-port", "0",
             "--ws-port", "0", "--http-port", "0", "--data-dir", str(self.data_dir)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"server exited early with {self.proc.wait()}: {self.log[-5:]}")
            self.log.append(line)
            if m := READY.search(line):
                self.mqtt_port, self.http_port = int(m.group(1)), int(m.group(2))
                threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
                return self
        raise AssertionError("server did not report its ports in time")

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:  # keep the pipe from filling; keep the lines for failure messages
            self.log.append(line)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (the service manager's stop); SIGKILL if it does not exit in time. The exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

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

    def http(self, method: str, path: str, body: Any = None, token: str | None = ADMIN,
             timeout: float = 5.0) -> tuple[int, Any]:
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

    def token(self, kind: str, ident: str) -> str:
        status, resp = self.http("POST", f"/api/admin/{kind}/{ident}/token")
        assert status == 200, resp
        return str(resp["data"]["token"])
