"""A throwaway RabbitMQ node (Debian's rabbitmq-server, MQTT plugin on) on loopback ports in a tmp dir.

Its own node name, cookie (HOME), epmd port and data dirs, so nothing is shared with a system RabbitMQ; `stop()`
ends the node's process group and its epmd. `RabbitCluster`: two such nodes sharing one cookie (HOME) and one epmd
port, the second joined to the first (`stop_app; join_cluster; start_app`)."""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.scale.broker_acl import broker_users, write_files
from tests.mosquitto_helpers import free_port, wait_listening

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
HAS_RABBIT = (RABBIT_BIN / "rabbitmq-server").exists() and any(
    Path("/usr/lib/rabbitmq/lib").glob("*/plugins/rabbitmq_mqtt-*"))
needs_rabbitmq = pytest.mark.skipif(not HAS_RABBIT, reason="rabbitmq-server with its MQTT plugin not installed "
                                                           "(apt-get install rabbitmq-server)")


class RabbitMQ:
    """One node in `tmp`. `home`/`epmd_port`: shared with the other nodes of a cluster (one cookie, one epmd);
    the node that did not bring its own epmd port owns (and stops) that epmd."""

    def __init__(self, tmp: Path, home: Path | None = None, epmd_port: int | None = None) -> None:
        self.dir = tmp
        self.mqtt_port = free_port()
        self.node = f"itest{self.mqtt_port}@localhost"
        self.owns_epmd = epmd_port is None
        self.env = {**os.environ, "HOME": str(home or tmp), "RABBITMQ_NODENAME": self.node,
                    "RABBITMQ_MNESIA_BASE": str(tmp / "mnesia"), "RABBITMQ_LOG_BASE": str(tmp / "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmp / "enabled_plugins"),
                    "RABBITMQ_CONFIG_FILE": str(tmp / "rabbitmq"), "RABBITMQ_PID_FILE": str(tmp / "pid"),
                    "ERL_EPMD_PORT": str(epmd_port or free_port()), "RABBITMQ_DIST_PORT": str(free_port()),
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
        done = subprocess.run(["sh", "-x", str(script)], env=self.env, capture_output=True, timeout=120, text=True)
        if done.returncode:
            raise RuntimeError(f"{script} failed ({done.returncode}): {done.stderr[-3000:]}")

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """`rabbitmqctl ARGS` against this node; its output (CalledProcessError with stderr on failure)."""
        done = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), *args], env=self.env, check=True,
                              capture_output=True, timeout=timeout, text=True)
        return done.stdout

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
        if self.owns_epmd:
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


class RabbitCluster:
    """Two nodes on loopback in `tmp` (one cookie, one epmd port, their own names, dist and MQTT ports): started in
    parallel, node 2 joined to node 1. `stop()` ends both and their epmd."""

    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        first = RabbitMQ(tmp / "n1", home=tmp)
        self.nodes = [first, RabbitMQ(tmp / "n2", home=tmp, epmd_port=int(first.env["ERL_EPMD_PORT"]))]
        first.owns_epmd = False  # a test may stop node 1 alone: the epmd goes with the cluster (stop())

    async def start(self) -> None:
        for node in self.nodes:
            node.dir.mkdir(exist_ok=True)
        try:
            await asyncio.gather(*(node.start() for node in self.nodes))
            first, second = self.nodes
            await asyncio.to_thread(second.ctl, "stop_app")
            await asyncio.to_thread(second.ctl, "join_cluster", first.node)
            await asyncio.to_thread(second.ctl, "start_app")
            await wait_listening(second.mqtt_port, second.proc, "rabbitmq-server (joined)",  # type: ignore[arg-type]
                                 tries=1200)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes[0]._stop_epmd()


async def load_site(node: RabbitMQ, out: Path, site: str, residents: list[tuple[str, str]],
                    devices: list[tuple[str, str]]) -> dict[str, str]:
    """The site's generated `rabbitmq.sh` run on `node` (residents/devices: (id, household)); user -> password."""
    users = broker_users([{"resident_id": r, "household_number": h} for r, h in residents],
                         [{"device_id": d, "household_number": h} for d, h in devices], site)
    write_files(users, out, mosquitto=False, rabbitmq=True, site_id=site)
    await asyncio.to_thread(node.ctl_script, out / "rabbitmq.sh")
    with (out / "credentials.csv").open(newline="") as f:
        return {row["user"]: row["password"] for row in csv.DictReader(f)}


def recorded_commands(script: Path, env: dict[str, str]) -> list[list[str]]:
    """The `rabbitmqctl` commands `script` runs, run against a recording `rabbitmqctl` (each one succeeds), in order."""
    shim = script.parent / "record-bin"
    shim.mkdir(exist_ok=True)
    record = script.parent / "commands.jsonl"
    record.unlink(missing_ok=True)
    ctl = shim / "rabbitmqctl"
    ctl.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
                   "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\" >> \"$RECORD\"\n")
    ctl.chmod(0o700)
    subprocess.run(["sh", str(script)], env={**env, "PATH": f"{shim}:{env.get('PATH', '')}", "RECORD": str(record)},
                   check=True, capture_output=True, timeout=60)
    return [json.loads(line) for line in record.read_text().splitlines()]


def _sha256_hash(password: str) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt(4) + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(commands: list[list[str]]) -> dict[str, Any]:
    """The definitions file (`rabbitmqctl import_definitions`) equivalent to these rabbitmqctl commands (the ones
    `admin broker-acl --rabbitmq` generates); any other command is an error, so a change of the generator shows."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in ("vhosts", "users", "permissions", "topic_permissions",
                                                               "policies")}
    for cmd in commands:
        verb, opts, args = cmd[0], {}, []
        rest = iter(cmd[1:])
        for a in rest:
            if a in ("-p", "--apply-to", "--priority"):
                opts[a] = next(rest)
            elif a != "--":
                args.append(a)
        vhost = opts.get("-p", "/")
        if verb == "add_vhost":
            out["vhosts"].append({"name": args[0]})
        elif verb == "add_user":
            out["users"].append({"name": args[0], "password_hash": _sha256_hash(args[1]), "tags": [],
                                 "hashing_algorithm": "rabbit_password_hashing_sha256"})
        elif verb == "set_permissions":
            out["permissions"].append({"user": args[0], "vhost": vhost, "configure": args[1], "write": args[2],
                                       "read": args[3]})
        elif verb == "set_topic_permissions":
            out["topic_permissions"].append({"user": args[0], "vhost": vhost, "exchange": args[1],
                                             "write": args[2], "read": args[3]})
        elif verb == "set_policy":
            out["policies"].append({"vhost": vhost, "name": args[0], "pattern": args[1],
                                    "definition": json.loads(args[2]), "apply-to": opts.get("--apply-to", "all"),
                                    "priority": int(opts.get("--priority", "0"))})
        else:
            raise ValueError(f"definitions(): no translation for `rabbitmqctl {' '.join(cmd)}`")
    return out


async def import_site(node: RabbitMQ, out: Path, site: str, residents: list[tuple[str, str]],
                      devices: list[tuple[str, str]]) -> dict[str, str]:
    """`load_site` in one `rabbitmqctl import_definitions` (~0.5 s, where `rabbitmq.sh` costs ~0.5 s per command, 3
    per user: a minute for a 20-household site): the site's generated `rabbitmq.sh` recorded, its commands written as
    a definitions file and imported; user -> password (from the generated credentials.csv)."""
    users = broker_users([{"resident_id": r, "household_number": h} for r, h in residents],
                         [{"device_id": d, "household_number": h} for d, h in devices], site)
    write_files(users, out, mosquitto=False, rabbitmq=True, site_id=site)
    commands = await asyncio.to_thread(recorded_commands, out / "rabbitmq.sh", node.env)
    defs = out / "definitions.json"
    defs.write_text(json.dumps(definitions(commands)))
    await asyncio.to_thread(node.ctl, "import_definitions", str(defs))
    with (out / "credentials.csv").open(newline="") as f:
        return {row["user"]: row["password"] for row in csv.DictReader(f)}
