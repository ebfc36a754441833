"""`intercom-broker backup DIR` and `intercom-broker restore DIR` (see broker/backup.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import urlsplit

from broker.admin_cli.common import add_location_flags, settings_of
from broker.backup import PG_DUMP, make_backup, restore_backup
from broker.config import ConfigError
from broker.db_open import StorageError

__all__ = ["backup_main", "restore_main"]


def redact(url: str) -> str:
    """The URL without a password (store.url never holds one, but a log line should not rely on that)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def backup_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="intercom-broker backup",
                                description="Copy the databases and snapshots, consistently, while the box runs "
                                            "(the PostgreSQL store of store.url with pg_dump).")
    p.add_argument("dir", type=Path, help="a new or empty directory to write the backup into")
    add_location_flags(p)
    args = p.parse_args(argv)
    try:
        settings = settings_of(args)
        data_dir, url = settings.server.data_dir, settings.store.url
        manifest = make_backup(data_dir, args.dir, url)
    except (ConfigError, StorageError) as exc:
        print(f"intercom-broker backup: {exc}", file=sys.stderr)
        return 1
    store = manifest["databases"].get(PG_DUMP) or manifest["databases"].get("intercom.db", {})
    rows = store.get("rows", {})
    what = f"{store['store']} and {data_dir}" if "store" in store else str(data_dir)
    print(f"backup of {what} written to {args.dir}: {len(manifest['files'])} files, "
          f"{rows.get('calls', 0)} calls, {rows.get('door_events', 0)} door events")
    return 0


def restore_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="intercom-broker restore",
                                description="Put a backup in place of a stopped box's data dir (and of the "
                                            "PostgreSQL store's tables, with pg_restore).")
    p.add_argument("dir", type=Path, help="a directory `intercom-broker backup` wrote")
    add_location_flags(p)
    p.add_argument("--force", action="store_true",
                   help="PostgreSQL store: restore even while an instance holds the site's lease (it keeps serving "
                        "what it has in memory: stop it)")
    args = p.parse_args(argv)
    try:
        settings = settings_of(args)
        data_dir = settings.server.data_dir
        moved = restore_backup(args.dir, data_dir, settings.store.url, args.force)
    except (ConfigError, StorageError) as exc:
        print(f"intercom-broker restore: {exc}", file=sys.stderr)
        return 1
    aside = f"; what it held before is in {moved}" if moved is not None else ""
    into = f"{redact(settings.store.url)} and {data_dir}" if settings.store.url else str(data_dir)
    print(f"restored {args.dir} into {into}{aside}")
    return 0
