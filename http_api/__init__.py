"""REST adapter: aiohttp views over the intercom services."""

from http_api.app import create_app

__all__ = ["create_app"]
