"""Smoke test: the raw load-generator client against plain amqtt (runs in a few seconds).

Run explicitly: .venv/bin/python -m pytest bench/test_bench_smoke.py
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from mqttload import MqttClient, connect, encode_remaining_length
from stats import Progress
from targets import AmqttTarget

N = 200


@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"), (2_097_152, b"\x80\x80\x80\x01")],
)
def test_remaining_length_encoding(n: int, encoded: bytes) -> None:
    assert encode_remaining_length(n) == encoded


def test_split_packets_are_reassembled() -> None:
    async def body() -> list[bytes]:
        got: list[bytes] = []
        c = MqttClient("x")
        c.on_message = lambda _c, _t, p: got.append(p)
        pkt = b"\x30" + encode_remaining_length(2 + 1 + 300) + b"\x00\x01t" + b"p" * 300
        stream = pkt * 3
        for i in range(0, len(stream), 7):  # feed in 7-byte slices
            c.data_received(stream[i : i + 7])
        return got

    assert asyncio.run(body()) == [b"p" * 300] * 3


async def _pub_sub(port: int, qos: int) -> tuple[int, int]:
    sub = await connect("127.0.0.1", port, f"smoke-sub-{qos}")
    pub = await connect("127.0.0.1", port, f"smoke-pub-{qos}")
    got, acked = Progress(), Progress()
    sub.on_message = lambda _c, _t, _p: got.add()
    pub.on_puback = lambda _c, _pid: acked.add()
    await sub.subscribe([(f"smoke/{qos}", qos)])
    for i in range(N):
        pub.publish(f"smoke/{qos}", i.to_bytes(4, "big"), qos)
        if i % 50 == 49:
            await asyncio.sleep(0)
    await got.wait(N, 10.0)
    if qos:
        await acked.wait(N, 10.0)
    await pub.disconnect()
    await sub.disconnect()
    return got.count, acked.count


def test_raw_client_against_amqtt(tmp_path: Path) -> None:
    async def body() -> list[tuple[int, int]]:
        target = AmqttTarget(tmp_path, plugins="minimal")
        if target.skip_reason():
            pytest.skip("amqtt not importable")
        await target.start()
        try:
            return [await _pub_sub(target.mqtt_port, qos) for qos in (0, 1)]
        finally:
            await target.stop()

    t0 = time.monotonic()
    (q0_got, _), (q1_got, q1_acked) = asyncio.run(body())
    assert q0_got == N
    assert q1_got == N
    assert q1_acked == N
    assert time.monotonic() - t0 < 20


def test_every_ours_target_serves_the_bench_site_from_a_data_dir_of_its_own(tmp_path: Path) -> None:
    """`ours@REV` and `ours+mypyc` run as `ours` does: the same config (the call scenarios' site), but never on
    another target's database (they once shared `ours-data-N`, and found the site only when `ours` ran first)."""
    import argparse

    from run import make_target

    args = argparse.Namespace(amqtt_plugins="minimal")
    seen: dict[str, tuple[str, str]] = {}
    for name in ("ours", "ours@HEAD", "ours+mypyc", "ours+mypyc@ee239a4"):  # made, not started
        target = make_target(name, tmp_path, args)
        target.runs = 1  # as start() counts, without starting
        argv, _, _ = target.command()
        seen[name] = (argv[argv.index("--config") + 1], argv[argv.index("--data-dir") + 1])
    configs = {config for config, _ in seen.values()}
    assert len(configs) == 1, seen
    assert "households:" in Path(configs.pop()).read_text()
    assert len({data_dir for _, data_dir in seen.values()}) == len(seen), seen
