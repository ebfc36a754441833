"""Subcommands of `intercom-broker` besides serving: backup, restore, admin."""

from broker.admin_cli.admin import admin_main
from broker.admin_cli.backup_cmd import backup_main, restore_main

__all__ = ["SUBCOMMANDS", "admin_main", "backup_main", "restore_main"]

SUBCOMMANDS = {"admin": admin_main, "backup": backup_main, "restore": restore_main}
