"""`mqtt.plugins`: the integrator's amqtt plugins, checked before the broker starts (and on reload).

The configuration checks only the shape of the mapping; whether each class path names an amqtt plugin that
imports, whether its options fit that plugin's `Config`, and whether it would fight our own `$SYS`
publisher, needs amqtt, so it is decided here, in the engine.
"""

from __future__ import annotations

import importlib

import dacite
from amqtt.plugins.base import BasePlugin
from amqtt.plugins.sys.broker import BrokerSysPlugin

from broker.config import ConfigError, Settings

__all__ = ["check_plugins", "plugin_class"]


def plugin_class(path: str) -> type[BasePlugin]:
    """The amqtt plugin class a `mqtt.plugins` key names (ConfigError saying why not)."""
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"mqtt.plugins: cannot import {path!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, BasePlugin)):
        raise ConfigError(f"mqtt.plugins: {path!r} is not an amqtt plugin (a subclass of "
                          "amqtt.plugins.base.BasePlugin)")
    return cls


def check_plugins(settings: Settings) -> None:
    """Every configured plugin loads, takes its options, and at most one `$SYS` publisher runs."""
    for path, options in settings.mqtt.plugins.items():
        plugin = plugin_class(path)
        config = getattr(plugin, "Config", None)
        if config is not None:
            try:
                dacite.from_dict(config, options or {}, config=dacite.Config(strict=True))
            except (dacite.DaciteError, TypeError) as exc:
                raise ConfigError(f"mqtt.plugins: {path}: {exc}") from None
        if issubclass(plugin, BrokerSysPlugin) and settings.metrics.sys_interval_s > 0:
            raise ConfigError(f"mqtt.plugins loads {path}, which publishes $SYS/broker/... as "
                              "metrics.sys_interval_s does: set metrics.sys_interval_s: 0 to use amqtt's instead")
