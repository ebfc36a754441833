"""`intercom-broker backup DIR` and `intercom-broker restore DIR` (see broker/backup.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from broker.admin_cli.common import add_location_flags, settings_of
from broker.backup import make_backup, restore_backup
from broker.config import ConfigError
from broker.db_open import StorageError

__all__ = ["backup_main", "restore_main"]


def backup_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="intercom-broker backup",
                                description="Copy the databases and snapshots, consistently, while the box runs.")
    p.add_argument("dir", type=Path, help="a new or empty directory to write the backup into")
    add_location_flags(p)
    args = p.parse_args(argv)
    try:
        data_dir = settings_of(args).server.data_dir
        manifest = make_backup(data_dir, args.dir)
    except (ConfigError, StorageError) as exc:
        print(f"intercom-broker backup: {exc}", file=sys.stderr)
        return 1
    rows = manifest["databases"].get("intercom.db", {}).get("rows", {})
    print(f"backup of {data_dir} written to {args.dir}: {len(manifest['files'])} files, "
          f"{rows.get('calls', 0)} calls, {rows.get('door_events', 0)} door events")
    return 0


def restore_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="intercom-broker restore",
                                description="Put a backup in place of a stopped box's data dir.")
    p.add_argument("dir", type=Path, help="a directory `intercom-broker backup` wrote")
    add_location_flags(p)
    args = p.parse_args(argv)
    try:
        data_dir = settings_of(args).server.data_dir
        moved = restore_backup(args.dir, data_dir)
    except (ConfigError, StorageError) as exc:
        print(f"intercom-broker restore: {exc}", file=sys.stderr)
        return 1
    aside = f"; what it held before is in {moved}" if moved is not None else ""
    print(f"restored {args.dir} into {data_dir}{aside}")
    return 0
