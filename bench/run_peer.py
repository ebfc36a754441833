"""The peer architecture for bench/calls.py: Mosquitto plus our call service in bridge mode.

    python bench/run_peer.py --mqtt-port P --http-port H --data-dir DIR

Starts Mosquitto on 127.0.0.1:P (`set_tcp_nodelay true`), then `python -m broker --external-broker
mqtt://127.0.0.1:P` with its REST API on H, and stops both on SIGTERM/SIGINT (the benchmark also kills
this process group).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_port(port: int, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mqtt-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--config", type=Path, help="broker.yaml for the call service")
    args = ap.parse_args()
    conf = args.data_dir / "mosquitto.conf"
    conf.write_text(f"listener {args.mqtt_port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                    "max_queued_messages 100000\npersistence false\nlog_dest stderr\nlog_type error\n")
    mosquitto = subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c", str(conf)])
    children = [mosquitto]
    try:
        wait_port(args.mqtt_port)
        service = subprocess.Popen(
            [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--http-port", str(args.http_port),
             "--mqtt-port", "0", "--ws-port", "0", "--data-dir", str(args.data_dir), "--log-level", "WARNING",
             "--external-broker", f"mqtt://127.0.0.1:{args.mqtt_port}",
             *(["--config", str(args.config)] if args.config else [])], cwd=REPO_ROOT)
        children.append(service)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
        while not stop and all(c.poll() is None for c in children):
            time.sleep(0.1)
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
