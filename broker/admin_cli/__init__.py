"""Subcommands of `intercom-broker` besides serving: backup, restore, admin."""

from broker.admin_cli.backup_cmd import backup_main, restore_main

__all__ = ["SUBCOMMANDS", "backup_main", "restore_main"]

SUBCOMMANDS = {"backup": backup_main, "restore": restore_main}
