"""`intercom-broker admin ...`: provision a site from a file, export and list it, issue and revoke tokens (with a
provisioning file and QR code per device), lift a flapping ban. Against a stopped box's data dir, the PostgreSQL
store of `store.url` (or `--store-url`) while no instance serves the site, or a running box's REST API with `--url`
(docs/operations.md "Provisioning a site")."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.admin_cli.backends import AdminError, Backend, Local, Remote
from broker.admin_cli.common import add_location_flags, settings_of
from broker.admin_cli.site_file import SiteFileError, Wanted, dump_csv, dump_yaml, read_site_file
from broker.config import ConfigError, Settings
from broker.db_open import StorageError
from broker.scale import broker_acl

__all__ = ["Change", "admin_main", "plan"]

PK = {"households": "household_number", "residents": "resident_id", "devices": "device_id"}
KIND_ALIASES = {"resident": "residents", "residents": "residents", "device": "devices", "devices": "devices"}


@dataclass(frozen=True)
class Change:
    kind: str
    ident: str
    create: bool
    fields: dict[str, Any]  # the whole row to create, or only the fields that change
    old: dict[str, Any]

    def __str__(self) -> str:
        what = f"{self.kind[:-1]} {self.ident}"
        if self.create:
            shown = ", ".join(f"{k}={v!r}" for k, v in self.fields.items()
                              if v not in (None, False) and k != PK[self.kind])
            return f"+ {what}" + (f" ({shown})" if shown else "")
        return f"~ {what}: " + ", ".join(f"{k} {self.old.get(k)!r} -> {v!r}" for k, v in self.fields.items())


def _current(row: dict[str, Any], kind: str) -> dict[str, Any]:
    if kind == "households":
        return {"name": row.get("name")}
    out = {"household_number": row["household_number"], "name": row.get("name")}
    if kind == "devices":
        out.update(kind=row.get("kind"), households=row.get("households"),
                   emergency=bool(row.get("emergency")))
    return out


def plan(wanted: Wanted, backend: Backend) -> tuple[list[Change], int]:
    """What importing `wanted` changes (households first, so members can move into new ones); and unchanged count."""
    changes: list[Change] = []
    unchanged = 0
    for kind in ("households", "residents", "devices"):
        have = {r[PK[kind]]: _current(r, kind) for r in backend.list(kind)}
        for ident, fields in getattr(wanted, kind).items():
            old = have.get(ident)
            if old is None:
                changes.append(Change(kind, ident, True, {PK[kind]: ident, **fields}, {}))
                continue
            diff = {k: v for k, v in fields.items() if old.get(k) != v}
            if diff:
                changes.append(Change(kind, ident, False, diff, old))
            else:
                unchanged += 1
    return changes, unchanged


def _import(args: argparse.Namespace, backend: Backend, _: Settings) -> int:
    changes, unchanged = plan(read_site_file(args.file), backend)
    for change in changes:
        print(change)
    created = sum(c.create for c in changes)
    summary = f"{created} to create, {len(changes) - created} to change, {unchanged} unchanged"
    if args.dry_run or not changes:
        print(("dry run: " if args.dry_run else "no changes: ") + summary)
        return 0
    for change in changes:
        if change.create:
            backend.create(change.kind, change.fields)
        else:
            backend.update(change.kind, change.ident, change.fields)
    print(f"imported {args.file}: {summary}")
    return 0


def _export(args: argparse.Namespace, backend: Backend, _: Settings) -> int:
    rows = [backend.list(k) for k in ("households", "residents", "devices")]
    fmt = args.format or ("csv" if args.output and args.output.suffix.lower() == ".csv" else "yaml")
    text = (dump_csv if fmt == "csv" else dump_yaml)(*rows)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _list(args: argparse.Namespace, backend: Backend, _: Settings) -> int:
    for kind in [args.kind] if args.kind else ["households", "residents", "devices"]:
        for row in backend.list(kind):
            extra = f" household={row['household_number']}" if kind != "households" else ""
            if kind == "devices":
                extra += f" kind={row.get('kind') or '-'}"
            print(f"{kind[:-1]} {row[PK[kind]]}{extra} name={row.get('name') or ''}")
    return 0


def _token(args: argparse.Namespace, backend: Backend, settings: Settings) -> int:
    kind = KIND_ALIASES[args.kind]
    if (args.id is None) == (not args.all) or (args.all and args.action == "revoke"):
        raise AdminError("token: give an id, or --all (issue only) for every resident or device")
    if args.name is not None and kind != "residents":
        raise AdminError("--name: only residents hold named tokens (one per phone or tablet)")
    if args.action == "revoke":
        backend.revoke_token(kind, args.id, args.name)
        print(f"revoked the {'token ' + repr(args.name) if args.name else 'token'} of {kind[:-1]} {args.id}")
        return 0
    for ident in [r[PK[kind]] for r in backend.list(kind)] if args.all else [args.id]:
        token = backend.issue_token(kind, ident, args.name)
        written = write_provisioning(args.out, settings, kind, ident, args.name, token, args.broker_host, args.port)
        print(f"issued a token for {kind[:-1]} {ident}: " + ", ".join(str(p) for p in written))
    return 0


def write_provisioning(out: Path, settings: Settings, kind: str, ident: str, name: str | None, token: str,
                       host: str | None, port: int | None) -> list[Path]:
    """`<out>/<role>-<id>[-<name>].json` (0600): what a device needs to log in; a QR code PNG of it for phones."""
    role = kind[:-1]
    tls = settings.mqtt.tls
    if host is None:
        host = settings.server.host if settings.server.host not in ("0.0.0.0", "::", "") else socket.getfqdn()
    client_id = f"{role}-{ident}" + (f"/{name}" if name and settings.auth.client_id_suffixes else "")
    info = {"broker_host": host, "mqtt_port": port or (tls.port if tls is not None else settings.server.mqtt_port),
            "tls": tls is not None, "client_id": client_id, "username": ident, "token": token,
            "http_port": settings.server.http_port}
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    stem = f"{role}-{ident}" + (f"-{name}" if name else "")
    path = out / f"{stem}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    written = [path]
    if role == "resident":
        import segno  # only needed here

        png = out / f"{stem}.png"
        segno.make(json.dumps(info, separators=(",", ":")), error="m").save(str(png), scale=6)
        os.chmod(png, 0o600)
        written.append(png)
    return written


def _unban(args: argparse.Namespace, backend: Backend, _: Settings) -> int:
    was = backend.unban(args.client_id)
    print(f"{args.client_id}: ban lifted" if was else f"{args.client_id} was not banned")
    return 0


def _where(p: argparse.ArgumentParser) -> None:
    add_location_flags(p)
    p.add_argument("--url", help="a running box's REST API (http://HOST:PORT); default: the data dir (box stopped), "
                                 "or the PostgreSQL store of store.url (no instance serving)")
    p.add_argument("--token", help="the admin token for --url (default: $INTERCOM_ADMIN_TOKEN)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="intercom-broker admin", description=__doc__)
    _where(p)
    # the same flags after the command too (`admin import site.csv --data-dir D`); given there, they win
    after = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    _where(after)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_sub_parser(after))
    imp = sub.add_parser("import", help="create and update households, residents and devices from a file")
    imp.add_argument("file", type=Path, help="site.csv or site.yaml")
    imp.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    imp.set_defaults(run=_import)
    exp = sub.add_parser("export", help="the directory as site.yaml or site.csv (no tokens)")
    exp.add_argument("-o", "--output", type=Path)
    exp.add_argument("--format", choices=["yaml", "csv"])
    exp.set_defaults(run=_export)
    ls = sub.add_parser("list", help="households, residents and devices")
    ls.add_argument("kind", nargs="?", choices=["households", "residents", "devices"])
    ls.set_defaults(run=_list)
    tok = sub.add_parser("token", help="issue or revoke a resident's or device's token")
    tok.add_argument("action", choices=["issue", "revoke"])
    tok.add_argument("kind", choices=sorted(KIND_ALIASES))
    tok.add_argument("id", nargs="?")
    tok.add_argument("--all", action="store_true", help="issue: one for every resident or device (old ones stop)")
    tok.add_argument("--name", help="a resident's named token (one per phone or tablet), revoked on its own")
    tok.add_argument("--out", type=Path, default=Path("provisioning"), help="where provisioning files go")
    tok.add_argument("--broker-host", help="the address devices reach the box at (default: server.host)")
    tok.add_argument("--port", type=int, help="the MQTT port devices use (default: from the config)")
    tok.set_defaults(run=_token)
    unban = sub.add_parser("unban", help="lift a client id's flapping ban (running box, --url)")
    unban.add_argument("client_id")
    unban.set_defaults(run=_unban)
    broker_acl.add_parser(sub)  # the external broker's users and ACL (bridge mode, docs/scale-out.md)
    return p


def _sub_parser(parent: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    class Sub(argparse.ArgumentParser):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs, parents=[parent])

    return Sub


def admin_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace, Backend, Settings], int] = args.run
    backend: Backend | None = None
    try:
        settings = settings_of(args)
        if args.url:
            token = args.token or os.environ.get("INTERCOM_ADMIN_TOKEN") or (
                settings.admin_token.get_secret_value() if settings.admin_token else "")
            backend = Remote(args.url, token)
        else:
            backend = Local(settings)
        return run(args, backend, settings)
    except (AdminError, ConfigError, StorageError, SiteFileError) as exc:
        print(f"intercom-broker admin: {exc}", file=sys.stderr)
        return 1
    finally:
        if backend is not None:
            backend.close()
