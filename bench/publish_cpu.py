"""Broker CPU per client PUBLISH, MQTT 3.1.1 against MQTT 5, in one process (no load generator to share the CPU).

    .venv/bin/python bench/publish_cpu.py [--messages 50000] [--repeat 5] [--rounds 3] [--size 64]

QoS 0 (a QoS 1 flow would measure the subscriber's window, not the broker). The real server (`IntercomServer`,
its plugins and a sqlite file in a temp dir) on 127.0.0.1. Per round and version, one subscriber and one
publisher connect over real sockets (the subscriber's socket is drained by a reader task), then the publisher's
`Connection.handle` is called directly with a pre-encoded PUBLISH: the time
is the broker's whole path from a framed packet to the subscriber's socket write (ACL, the call plugin's
interception, routing, encoding, delivery), measured with `time.process_time()`, the best of `--repeat`. The
versions alternate round by round, so machine noise hits both; `bench/run.py`'s end-to-end rows also carry the
load generator's own per-version cost. Compile the engine first (`python -m broker.native_build`) to measure
the compiled one; the first line says which engine ran.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from mqttload import encode_connect, encode_publish, encode_subscribe

from broker.config import load_settings
from broker.native_build import status as engine_status
from broker.server import IntercomServer


async def _client(port: int, client_id: str, version: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw socket after CONNACK: the subscriber's bytes are read, not parsed, so no client work is timed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode_connect(client_id, keepalive=60, protocol=version))
    head = await reader.readexactly(2)
    await reader.readexactly(head[1])
    if head[0] != 0x20:
        raise RuntimeError(f"{client_id}: no CONNACK")
    return reader, writer


async def _drain(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 16):
        pass


async def one_round(server: IntercomServer, version: int, tag: str, args: argparse.Namespace) -> float:
    """Best-of-`repeat` broker CPU per PUBLISH (µs) for one subscriber/publisher pair speaking `version`."""
    port = server.mqtt_port
    topic = f"bench/cpu/{tag}"
    sub_r, sub_w = await _client(port, f"cpu-sub-{tag}", version)
    sub_w.write(encode_subscribe(1, [(topic, 0)], protocol=version))
    head = await sub_r.readexactly(2)
    await sub_r.readexactly(head[1])
    _, pub_w = await _client(port, f"cpu-pub-{tag}", version)
    await asyncio.sleep(0.05)
    assert server.broker is not None
    conn = server.broker._sessions[f"cpu-pub-{tag}"][1]
    assert conn is not None
    packet = encode_publish(topic, b"x" * args.size, protocol=version)  # QoS 0
    end = 1
    while packet[end] & 0x80:  # the Remaining Length's continuation bytes
        end += 1
    first, body = packet[0], packet[end + 1:]  # as the framer hands a packet on: no fixed header
    reading = asyncio.ensure_future(_drain(sub_r))
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.process_time()
        for i in range(args.messages):
            conn.handle(first, body)
            if i % 100 == 99:
                await asyncio.sleep(0)  # the subscriber's writes flush, its reader runs
        best = min(best, (time.process_time() - t0) / args.messages * 1e6)
        await asyncio.sleep(0.05)
    reading.cancel()
    for w in (sub_w, pub_w):
        w.close()
    return best


async def amain(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="publish-cpu-") as tmp:
        raw = {
            "server": {"host": "127.0.0.1", "mqtt_port": 0, "ws_port": 0, "http_port": 0, "data_dir": tmp},
            "trtc": {"secret_key": "bench-secret-key"},
        }
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(raw))
        server = IntercomServer(load_settings(path, env={"INTERCOM_ADMIN_TOKEN": "bench-admin"}))
        await server.start()
        ratios: list[float] = []
        try:
            print(f"{engine_status().summary()}; QoS 0, {args.size} B payload, {args.messages} messages x "
                  f"best of {args.repeat}", flush=True)
            for rnd in range(args.rounds):
                order = (4, 5) if rnd % 2 == 0 else (5, 4)
                got = {v: await one_round(server, v, f"{rnd}-{v}", args) for v in order}
                ratios.append(got[5] / got[4])
                print(f"round {rnd + 1}: 3.1.1 {got[4]:.2f} µs, MQTT 5 {got[5]:.2f} µs per PUBLISH: "
                      f"MQTT 5 / 3.1.1 = {ratios[-1]:.2f}", flush=True)
        finally:
            await server.stop()
        print(f"median MQTT 5 / 3.1.1 = {statistics.median(ratios):.2f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=5, help="timed passes per round; the best counts")
    ap.add_argument("--rounds", type=int, default=3, help="3.1.1/5 pairs, alternating which goes first")
    ap.add_argument("--size", type=int, default=64, help="payload bytes")
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.run(amain(args))
    except ImportError:
        asyncio.run(amain(args))


if __name__ == "__main__":
    main()
