"""amqtt plugins: thin adapters from broker hooks to the intercom services."""

from plugins.auth import IntercomAuthPlugin
from plugins.call_plugin import CallPlugin

__all__ = ["CallPlugin", "IntercomAuthPlugin"]
