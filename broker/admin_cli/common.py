"""What every offline subcommand shares: `--config` / `--data-dir` / `--store-url` flags resolved the way the
server does."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from broker.config import ConfigError, Settings, StoreConfig, load_settings

__all__ = ["add_location_flags", "settings_of"]


def add_location_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (default: ./broker.yaml if present)")
    p.add_argument("--data-dir", type=Path, help="the box's data dir (default: the config's, else ./data)")
    p.add_argument("--store-url", help="the PostgreSQL store, postgresql://user@host:port/db (default: the config's "
                                       "store.url; the password in PGPASSWORD or ~/.pgpass)")


def settings_of(args: argparse.Namespace) -> Settings:
    config = args.config
    if config is None and Path("broker.yaml").exists():
        config = Path("broker.yaml")
    settings = load_settings(config, {"data_dir": args.data_dir})
    url = getattr(args, "store_url", None)
    if url is not None:  # validated as store.url is (a password in it is refused)
        try:
            store = StoreConfig.model_validate({**settings.store.model_dump(), "url": url})
        except ValidationError as exc:
            raise ConfigError(f"--store-url: {exc.errors()[0]['msg']}") from exc
        settings = settings.model_copy(update={"store": store})
    return settings
