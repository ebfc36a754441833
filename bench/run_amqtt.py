"""Run a plain amqtt 0.12.1 broker on 127.0.0.1:<port> (benchmark target).

Usage: python bench/run_amqtt.py --port 18830 [--plugins default|minimal] [--uvloop]

``default`` keeps amqtt's default plugin set (event/packet loggers, anonymous
auth with allow_anonymous, $SYS every 20 s); ``minimal`` keeps only anonymous
auth.  The stock asyncio loop is used unless --uvloop is given, like the
``amqtt`` console script.  Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from amqtt.broker import Broker

ANON = "amqtt.plugins.authentication.AnonymousAuthPlugin"


def make_config(port: int, plugins: str) -> dict[str, Any]:
    if plugins == "minimal":
        plugin_cfg: dict[str, Any] = {ANON: {"allow_anonymous": True}}
    else:
        plugin_cfg = {
            "amqtt.plugins.logging_amqtt.EventLoggerPlugin": {},
            "amqtt.plugins.logging_amqtt.PacketLoggerPlugin": {},
            ANON: {"allow_anonymous": True},
            "amqtt.plugins.sys.broker.BrokerSysPlugin": {"sys_interval": 20},
        }
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}", "max_connections": -1}},
        "plugins": plugin_cfg,
    }


async def serve(port: int, plugins: str) -> None:
    broker = Broker(make_config(port, plugins))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"amqtt listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(broker.shutdown(), 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--plugins", choices=("default", "minimal"), default="default")
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.port, args.plugins))


if __name__ == "__main__":
    main()
