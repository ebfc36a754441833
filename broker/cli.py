"""`intercom-broker` / `python -m broker`: parse flags, load settings, serve until SIGINT/SIGTERM (SIGHUP: reload)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from broker.admin_cli import SUBCOMMANDS
from broker.bridge import BridgedServer, parse_broker_url
from broker.config import ConfigError, Settings, load_settings
from broker.db_open import StorageError
from broker.mqtt.plugin_config import check_plugins
from broker.native_build import status as engine_status
from broker.ops.logs import setup_logging
from broker.ops.reload import Reloader
from broker.ops.sdnotify import Notifier
from broker.server import IntercomServer

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="intercom-broker", description=__doc__,
                                epilog="other commands: backup DIR, restore DIR, admin ..., integrator --config FILE "
                                       "(each with --help)")
    _bridge_flags(p)
    p.add_argument("--config", type=Path, help="YAML config (default: ./broker.yaml if present)")
    p.add_argument("--host", help="address every listener binds to (default 127.0.0.1)")
    p.add_argument("--mqtt-port", type=int, help="MQTT TCP port, 0 = any free port (default 1883)")
    p.add_argument("--ws-port", type=int, help="MQTT-over-WebSocket port, 0 = any free port (default 8083)")
    p.add_argument("--http-port", type=int, help="REST port, 0 = any free port (default 8080)")
    p.add_argument("--data-dir", type=Path, help="where the sqlite database lives (default ./data)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", choices=["text", "json"],
                   help="text, or one JSON object per line (default: logging.format, text)")
    p.add_argument("--external-broker", metavar="URL",
                   help="bridge mode: no embedded broker; attach the call service to this broker "
                        "(mqtt://[user:password@]host:port) as an MQTT client; several nodes of one cluster: "
                        "host1:port1,host2:port2 (tried in turn on reconnect)")
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                   help="event loop: uvloop (the `fast` extra), asyncio, or auto = uvloop when installed "
                        "(default auto)")
    return p


def _bridge_flags(p: argparse.ArgumentParser) -> None:
    """--external-broker's companions (mqtt[s]:// URLs; docs/scale-out.md), listed in a group of their own."""
    bridge = p.add_argument_group("bridge mode (with --external-broker)")
    bridge.add_argument("--site-id", help="mount this site under sites/<SITE_ID>/ on the external broker, so "
                                          "several sites share it without cross-talk")
    bridge.add_argument("--shared-group", metavar="NAME",
                        help="subscribe as $share/NAME/... so several service instances split the requests "
                             "(MQTT 5 shared subscriptions)")
    bridge.add_argument("--bridge-client-id", metavar="ID", help="the service's MQTT client id (default: random)")
    bridge.add_argument("--broker-protocol", choices=["auto", "5", "3.1.1"],
                        help="MQTT version to the external broker (default auto: 5, else 3.1.1, e.g. RabbitMQ 3.x)")
    bridge.add_argument("--broker-ca", type=Path, metavar="FILE", help="mqtts: CA bundle that signed the broker's "
                                                                       "certificate (default: the system CAs)")
    bridge.add_argument("--broker-cert", type=Path, metavar="FILE", help="mqtts: client certificate (PEM)")
    bridge.add_argument("--broker-key", type=Path, metavar="FILE", help="mqtts: the client certificate's key")
    bridge.add_argument("--lease-ttl", type=float, metavar="S",
                        help="with store.url (PostgreSQL): the site's lease lasts S seconds (default 6); a standby "
                             "takes over within about 1.3 x S of the holder's death")


def bridge_from_args(settings: Settings, argv: list[str] | None = None) -> BridgedServer | None:
    """The bridged server the flags describe (None: no --external-broker); bad flags raise ConfigError."""
    args = _parser().parse_args(argv)
    bridge_only = (args.site_id, args.shared_group, args.bridge_client_id, args.broker_ca, args.broker_cert,
                   args.broker_key, args.broker_protocol, args.lease_ttl)
    if not args.external_broker:
        if any(v is not None for v in bridge_only):
            raise ConfigError("--site-id, --shared-group, --bridge-client-id, --lease-ttl and --broker-* need "
                              "--external-broker")
        return None
    target = parse_broker_url(args.external_broker, args.broker_ca, args.broker_cert, args.broker_key)
    return BridgedServer(settings, target, shared_group=args.shared_group, site_id=args.site_id,
                         client_id=args.bridge_client_id, protocol=args.broker_protocol or "auto",
                         lease_ttl_s=6.0 if args.lease_ttl is None else args.lease_ttl)


def loader_from_args(argv: list[str] | None = None) -> Callable[[], Settings]:
    """Load the settings as the flags say; called again on SIGHUP (the same file, flags and environment)."""
    args = _parser().parse_args(argv)
    config = args.config
    if config is None and Path("broker.yaml").exists():
        config = Path("broker.yaml")
    overrides = {"host": args.host, "mqtt_port": args.mqtt_port, "ws_port": args.ws_port,
                 "http_port": args.http_port, "data_dir": args.data_dir, "log_level": args.log_level}

    def load() -> Settings:
        settings = load_settings(config, overrides)
        check_plugins(settings)  # the integrator's amqtt plugins load and fit (the engine decides)
        if args.log_format is not None:
            settings.logging.format = args.log_format
        return settings

    return load


def settings_from_args(argv: list[str] | None = None) -> Settings:
    return loader_from_args(argv)()


async def serve(settings: Settings, external_broker: str | BridgedServer | None = None,
                load: Callable[[], Settings] | None = None) -> None:
    server: IntercomServer | BridgedServer
    if isinstance(external_broker, BridgedServer):
        server = external_broker
    else:
        server = BridgedServer(settings, external_broker) if external_broker else IntercomServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    notifier = Notifier()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(server, load, notifier))
    kind = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    logging.getLogger("intercom").info("event loop: %s", kind)
    if isinstance(server, BridgedServer):
        server.on_lost = stop.set  # the site's lease lost: stop, and exit with an error (below)
    try:
        starting = asyncio.ensure_future(server.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # told to stop while starting (a standby waiting for its site's lease)
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return
        stopping.cancel()
        starting.result()
        tune_gc()
        notifier.ready(f"serving mqtt port {server.mqtt_port}, http port {server.http_port}")
        notifier.start_watchdog()
        await stop.wait()
        notifier.stopping()
        logging.getLogger("intercom").info("shutting down")
    finally:
        notifier.stop_watchdog()
        await asyncio.wait_for(server.stop(), timeout=5)
    if isinstance(server, BridgedServer) and server.lost is not None:
        raise StorageError(server.lost)  # exit 1: the service manager restarts it, as a standby


def _reload(server: IntercomServer | BridgedServer, load: Callable[[], Settings] | None, notifier: Notifier) -> None:
    """SIGHUP: re-read the configuration (broker/ops/reload.py); the service manager hears RELOADING/READY."""
    if server.services is None or load is None:
        why = "not serving yet" if load else "no configuration to re-read"
        logging.getLogger("intercom").warning("SIGHUP ignored: %s", why)
        return
    notifier.reloading()
    if isinstance(server, IntercomServer):
        reloader = Reloader(load, server.services, server.broker, server.tls_contexts, server.presence)
    else:
        reloader = Reloader(load, server.services)
    ok = reloader.reload()
    notifier.reloaded("configuration reloaded" if ok else "reload refused: running configuration kept")


def tune_gc() -> None:
    """Freeze start-up objects out of the collector and collect young objects less often.

    Every connection adds a few hundred long-lived objects; with CPython's defaults a connect storm
    spent ~25 % of its CPU in full collections re-walking them (measured: 5.6 s -> 3.5 s for 3,000
    connects). Objects created later are still collected; only the pace changes.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, None]], None] | None:
    """How to run the server for `--loop`: asyncio.run, uvloop.run, or None if uvloop is asked for but missing."""
    if choice == "asyncio":
        return asyncio.run
    try:
        import uvloop  # optional speed-up (the `fast` extra)
    except ImportError:
        return None if choice == "uvloop" else asyncio.run
    return uvloop.run


def main(argv: list[str] | None = None) -> int:
    # Data-dir files (token hashes, call history, keys) are the service user's alone: 0600 files, 0700 dirs.
    os.umask(0o077)
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in SUBCOMMANDS:  # backup, restore, admin: see broker/admin_cli
        return SUBCOMMANDS[args[0]](args[1:])
    if args and args[0] == "integrator":  # the view across sites: its own small app (broker/integrator)
        from broker.integrator.cli import main as integrator

        return integrator(args[1:])
    try:
        load = loader_from_args(argv)
        settings = load()
        external = bridge_from_args(settings, argv)
    except ConfigError as exc:
        print(f"intercom-broker: {exc}", file=sys.stderr)
        return 2
    try:
        setup_logging(settings.logging, settings.server.log_level)
    except OSError as exc:
        print(f"intercom-broker: cannot open logging.file: {exc}", file=sys.stderr)
        return 1
    engine = engine_status()  # a compiled module older than its .py would run old code (broker/native_build.py)
    if refusal := engine.refusal():
        print(f"intercom-broker: {refusal}", file=sys.stderr)
        return 2
    logging.getLogger("intercom").info("%s", engine.summary())
    runner = loop_runner(_parser().parse_args(argv).loop)
    if runner is None:
        print("intercom-broker: --loop uvloop needs uvloop (pip install 'intercom-broker[fast]')", file=sys.stderr)
        return 2
    try:
        runner(serve(settings, external, load))
    except ConfigError as exc:
        print(f"intercom-broker: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"intercom-broker: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"intercom-broker: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0
