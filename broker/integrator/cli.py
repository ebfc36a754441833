"""`intercom-broker integrator --config integrator.yaml [--host H] [--http-port P]`: serve the view across sites."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from broker.config import ConfigError
from broker.integrator.app import create_app
from broker.integrator.config import load_config

__all__ = ["main"]

log = logging.getLogger("intercom.integrator")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="intercom-broker integrator", description=__doc__)
    p.add_argument("--config", type=Path, required=True, help="the sites to watch (contrib/integrator.yaml)")
    p.add_argument("--host", help="address to listen on (default: http.host, 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="port, 0 = any free port (default: http.port, 8090)")
    return p


async def serve(app: web.Application, host: str, port: int, sites: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        log.info("intercom-broker integrator serving http://%s:%d (%d sites)", host, bound, sites)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"intercom-broker integrator: {exc}", file=sys.stderr)
        return 2
    cfg = loaded.config
    host = args.host or cfg.http.host
    port = cfg.http.port if args.http_port is None else args.http_port
    try:
        asyncio.run(serve(create_app(loaded), host, port, len(cfg.sites)))
    except OSError as exc:
        print(f"intercom-broker integrator: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
