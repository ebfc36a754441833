"""What every offline subcommand shares: `--config` / `--data-dir` flags resolved the way the server does."""

from __future__ import annotations

import argparse
from pathlib import Path

from broker.config import Settings, load_settings

__all__ = ["add_location_flags", "settings_of"]


def add_location_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (default: ./broker.yaml if present)")
    p.add_argument("--data-dir", type=Path, help="the box's data dir (default: the config's, else ./data)")


def settings_of(args: argparse.Namespace) -> Settings:
    config = args.config
    if config is None and Path("broker.yaml").exists():
        config = Path("broker.yaml")
    return load_settings(config, {"data_dir": args.data_dir})
