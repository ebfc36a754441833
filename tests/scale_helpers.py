"""Call-service instances as subprocesses for the scale-out tests (leases, take-over, clusters): start them, see which
one serves a site, count the notifications a party got."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support.inbox import Inbox
from tests.support.process import ROOT, stop_process

SERVING = re.compile(r"intercom-broker \(bridge\) http://")


class Instance:
    """`python -m broker --external-broker URL --site-id SITE --lease-ttl TTL` as a subprocess; stderr kept line by
    line. `password`: the broker password ($INTERCOM_BROKER_PASSWORD), `extra`: more flags."""

    def __init__(self, name: str, config: Path, data_dir: Path, broker_url: str, site: str = "A",
                 ttl_s: float = 1.5, extra: Sequence[str] = ("--broker-protocol", "5"),
                 password: str | None = None) -> None:
        self.name = name
        self.site = site
        env = {**os.environ, "INTERCOM_TRTC_SECRET_KEY": "scale-test-secret"}
        env.pop("INTERCOM_ADMIN_TOKEN", None)
        env.pop("INTERCOM_BROKER_PASSWORD", None)
        if password is not None:
            env["INTERCOM_BROKER_PASSWORD"] = password
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "--config", str(config), "--host", "127.0.0.1", "--http-port", "0",
             "--data-dir", str(data_dir), "--external-broker", broker_url, "--site-id", site,
             "--lease-ttl", str(ttl_s), *extra],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.serving_at: float | None = None  # monotonic time of its "serving" line
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if self.serving_at is None and SERVING.search(line):
                self.serving_at = time.monotonic()
            self.log.append(line)

    def text(self) -> str:
        return "".join(self.log)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)


async def wait_serving(instances: list[Instance], timeout: float = 30.0) -> Instance:
    """The one live instance that serves the site (and only one does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        serving = [i for i in instances if i.serving_at is not None and i.proc.poll() is None]
        if serving:
            assert len(serving) == 1, [i.name for i in serving]
            return serving[0]
        for inst in instances:
            assert inst.proc.poll() is None, f"{inst.name} exited:\n{inst.text()}"
        await asyncio.sleep(0.05)
    raise AssertionError("no instance took the site:\n" + "\n".join(i.text() for i in instances))


async def wait_standby(instances: list[Instance], timeout: float = 30.0) -> None:
    """Every one of `instances` has said it waits for its site's lease."""
    deadline = time.monotonic() + timeout
    while not all(f"standby for site '{i.site}'" in i.text() for i in instances):
        assert time.monotonic() < deadline, "\n".join(i.text() for i in instances)
        await asyncio.sleep(0.05)


def ctl(call_id: str, action: str) -> Callable[[str, Any], bool]:
    return lambda t, b: (t.endswith("/calls/control") and b.get("call_info", {}).get("call_id") == call_id
                         and b["call_info"].get("action") == action)


def count(inbox: Inbox, call_id: str, action: str) -> int:
    match = ctl(call_id, action)
    return sum(1 for t, b, _ in inbox.messages if isinstance(b, dict) and match(t, b))
