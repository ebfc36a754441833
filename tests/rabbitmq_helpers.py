"""A throwaway RabbitMQ node (Debian's rabbitmq-server, MQTT plugin on) on loopback ports in a tmp dir.

Its own node name, cookie (HOME), epmd port and data dirs, so nothing is shared with a system RabbitMQ; `stop()`
ends the node's process group and its epmd."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.mosquitto_helpers import free_port, wait_listening

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
HAS_RABBIT = (RABBIT_BIN / "rabbitmq-server").exists() and any(
    Path("/usr/lib/rabbitmq/lib").glob("*/plugins/rabbitmq_mqtt-*"))
needs_rabbitmq = pytest.mark.skipif(not HAS_RABBIT, reason="rabbitmq-server with its MQTT plugin not installed "
                                                           "(apt-get install rabbitmq-server)")


class RabbitMQ:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.mqtt_port = free_port()
        self.env = {**os.environ, "HOME": str(tmp), "RABBITMQ_NODENAME": f"itest{self.mqtt_port}@localhost",
                    "RABBITMQ_MNESIA_BASE": str(tmp / "mnesia"), "RABBITMQ_LOG_BASE": str(tmp / "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmp / "enabled_plugins"),
                    "RABBITMQ_CONFIG_FILE": str(tmp / "rabbitmq"), "RABBITMQ_PID_FILE": str(tmp / "pid"),
                    "ERL_EPMD_PORT": str(free_port()), "RABBITMQ_DIST_PORT": str(free_port()),
                    "RABBITMQ_ADVANCED_CONFIG_FILE": str(tmp / "advanced.config"),
                    "PATH": f"{RABBIT_BIN}:{os.environ.get('PATH', '')}"}
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{free_port()}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = false\nloopback_users = none\nlog.console = true\nlog.file = false\n")
        log = (self.dir / "server.log").open("ab")
        # its own session: stop() ends the whole group (the script, beam, its helpers)
        self.proc = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=self.env,  # noqa: ASYNC220
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        try:
            await wait_listening(self.mqtt_port, self.proc, "rabbitmq-server", tries=1200)  # ~10 s here, 60 s max
        except BaseException:
            self.stop()
            raise

    def ctl_script(self, script: Path) -> None:
        subprocess.run(["sh", str(script)], env=self.env, check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        if self.proc is not None:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            self.proc = None
        self._stop_epmd()

    def _stop_epmd(self) -> None:
        """epmd daemonizes out of the group (and `epmd -kill` refuses while a node name lingers): end the one that
        carries our own ERL_EPMD_PORT, by its pid."""
        mark = f"ERL_EPMD_PORT={self.env['ERL_EPMD_PORT']}".encode()
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                ours = mark in (proc / "environ").read_bytes().split(b"\0")
                if ours and (proc / "comm").read_text().strip() == "epmd":
                    os.kill(int(proc.name), signal.SIGTERM)
            except (OSError, ValueError):
                continue

    async def restart(self) -> None:
        self.stop()
        await asyncio.sleep(0.5)
        await self.start()
