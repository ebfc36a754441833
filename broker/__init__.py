"""intercom-broker: one-box video-intercom call server (embedded MQTT broker + REST + sqlite)."""

__all__ = ["__version__"]
__version__ = "0.1.0"
