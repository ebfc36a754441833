"""Brokers under test. Each runs as a child process on 127.0.0.1 and a free port.

A target exposes ``name``, ``mqtt_port``, ``http_port``, ``pid``, optional MQTT
``username``/``password``, ``skip_reason()``, and ``async start()``/``async stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def port_open(port: int) -> bool:
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
    except (TimeoutError, OSError):
        return False
    w.close()
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


class TargetError(Exception):
    """A target failed to start."""


class Target:
    """Base class: a broker started as a child process."""

    name = "base"
    username: str | None = None
    password: str | None = None

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mqtt_port = 0
        self.http_port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"
        self.runs = 0
        self.cpus: set[int] | None = None  # CPU affinity for the next start(), None = unpinned

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def skip_reason(self) -> str | None:
        """Why this target cannot run on this machine, or None."""
        return None

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        """argv, extra environment and cwd for the child process."""
        raise NotImplementedError

    async def ready(self) -> bool:
        return await port_open(self.mqtt_port)

    async def start(self) -> None:
        self.runs += 1
        self.mqtt_port = free_port()
        argv, env_extra, cwd = self.command()
        self.proc = self._spawn(argv, {**os.environ, **env_extra}, cwd)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if await self.ready():
                return
            await asyncio.sleep(0.05)
        rc = self.proc.poll()
        await self.stop()
        why = f"exited with {rc}" if rc is not None else f"not ready within {READY_TIMEOUT_S:.0f} s"
        raise TargetError(f"{self.name} {why}; log tail:\n{self.log_tail()}")

    def _spawn(self, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            log.write(f"\n==== run {self.runs}: {' '.join(argv)}\n".encode())
            log.flush()
            # The child inherits this thread's CPU mask at fork: set it around Popen, then restore.
            saved = os.sched_getaffinity(0)
            if self.cpus:
                os.sched_setaffinity(0, self.cpus)
            try:
                # own session => own process group, so stop() can signal the whole tree by its id
                return subprocess.Popen(
                    argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
            finally:
                os.sched_setaffinity(0, saved)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(proc.pid, sig)  # its own session/group: started with start_new_session
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return
                await asyncio.sleep(0.05)

    def kill_now(self) -> None:
        """Synchronous last-resort cleanup (atexit / KeyboardInterrupt)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class AmqttTarget(Target):
    """Plain amqtt 0.12.1 via bench/run_amqtt.py (stock asyncio loop)."""

    name = "amqtt"

    def __init__(self, workdir: Path, plugins: str = "default") -> None:
        super().__init__(workdir)
        self.plugins = plugins

    def skip_reason(self) -> str | None:
        r = subprocess.run([sys.executable, "-c", "import amqtt.broker"], capture_output=True, check=False)
        return None if r.returncode == 0 else "amqtt is not importable"

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        argv = [sys.executable, str(BENCH_DIR / "run_amqtt.py"), "--port", str(self.mqtt_port)]
        return [*argv, "--plugins", self.plugins], {}, BENCH_DIR


class MosquittoTarget(Target):
    """Debian's mosquitto with a generated config file."""

    name = "mosquitto"

    def skip_reason(self) -> str | None:
        if shutil.which("mosquitto") is None:
            return "mosquitto not installed (apt-get install -y mosquitto)"
        return None

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.mqtt_port} {HOST}",
                    "allow_anonymous true",
                    "set_tcp_nodelay true",
                    "max_queued_messages 1000000",
                    "persistence false",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "",
                ]
            )
        )
        exe = shutil.which("mosquitto") or "mosquitto"
        return [exe, "-c", str(conf)], {}, self.workdir


class OursTarget(Target):
    """Our server: ``python -m broker`` from the repository root."""

    name = "ours"
    admin_token = "bench-admin"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.username = os.environ.get("BENCH_OURS_USERNAME")
        self.password = os.environ.get("BENCH_OURS_PASSWORD")
        # `--config` (run.py: the call scenarios' site, for every `ours` target alike), else the tree's broker.yaml
        self.config: Path | None = None

    def skip_reason(self) -> str | None:
        r = subprocess.run(
            [sys.executable, "-c", "import broker"], cwd=REPO_ROOT, capture_output=True, check=False, timeout=30
        )
        if r.returncode != 0:
            last = (r.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
            return f"`import broker` failed: {last}"
        return None

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        self.http_port = free_port()
        data_dir = self.workdir / f"{self.name}-data-{self.runs}"  # each target and start its own database
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "broker", "--host", HOST,
            "--mqtt-port", str(self.mqtt_port), "--ws-port", "0",
            "--http-port", str(self.http_port), "--data-dir", str(data_dir),
        ]  # fmt: skip
        if self.config is not None:
            argv += ["--config", str(self.config)]
        return argv, {"INTERCOM_ADMIN_TOKEN": self.admin_token}, REPO_ROOT

    async def ready(self) -> bool:
        if not await port_open(self.mqtt_port):
            return False
        return await asyncio.to_thread(_http_ok, f"http://{HOST}:{self.http_port}/healthz")


class OursAtRevTarget(OursTarget):
    """``ours@REV``: our server as it was at git revision REV (its tracked files exported into the run's temp dir
    with ``git archive``), run exactly as ``ours`` with this checkout's Python environment: a before/after
    comparison in one run, on one machine state."""

    def __init__(self, workdir: Path, rev: str) -> None:
        super().__init__(workdir)
        self.rev = rev
        self.name = f"ours@{rev}"
        self.tree = workdir / f"tree-{rev.replace('/', '_')}"

    def skip_reason(self) -> str | None:
        if not self.tree.exists():
            self.tree.mkdir(parents=True)
            archive = subprocess.run(["git", "archive", self.rev], cwd=REPO_ROOT, capture_output=True, check=False,
                                     timeout=60)
            if archive.returncode != 0:
                return f"git archive {self.rev} failed: {archive.stderr.decode(errors='replace').strip()}"
            subprocess.run(["tar", "-x", "-C", str(self.tree)], input=archive.stdout, check=True, timeout=60)
        r = subprocess.run([sys.executable, "-c", "import broker"], cwd=self.tree, capture_output=True, check=False,
                           timeout=30)
        return None if r.returncode == 0 else f"`import broker` failed at {self.rev}"

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        argv, env, _ = super().command()
        return argv, env, self.tree


class OursMypycTarget(OursAtRevTarget):
    """``ours+mypyc`` (``ours+mypyc@REV``): the tree at HEAD (REV) exported as ``ours@REV`` does, its engine compiled
    there with ``python -m broker.native_build`` (mypyc and a C compiler: the ``native`` extra), run as ``ours``."""

    BUILD_TIMEOUT_S = 600.0

    def __init__(self, workdir: Path, rev: str = "HEAD") -> None:
        super().__init__(workdir, rev)
        self.name = "ours+mypyc" if rev == "HEAD" else f"ours+mypyc@{rev}"
        self.tree = workdir / f"tree-mypyc-{rev.replace('/', '_')}"
        self.log_path = workdir / f"{self.name}.log"

    def skip_reason(self) -> str | None:
        if why := super().skip_reason():
            return why
        if (self.tree / "broker" / "_native.json").exists():
            return None  # compiled by an earlier case of this run
        try:
            r = subprocess.run([sys.executable, "-m", "broker.native_build"], cwd=self.tree, capture_output=True,
                               check=False, timeout=self.BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"python -m broker.native_build took over {self.BUILD_TIMEOUT_S:.0f} s"
        with self.log_path.open("ab") as log:
            log.write(r.stdout + r.stderr)
        if r.returncode != 0:
            last = (r.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
            return f"compile failed: {last}"
        return None


TARGET_TYPES: dict[str, type[Target]] = {
    "amqtt": AmqttTarget,
    "mosquitto": MosquittoTarget,
    "ours": OursTarget,
    "ours+mypyc": OursMypycTarget,
}
