"""The integrator app's typed state."""

import aiohttp
from aiohttp import web

from broker.integrator.fanout import Sites

__all__ = ["HTTP", "SITES"]

SITES = web.AppKey("sites", Sites)
# the one client session every request to the sites goes through (its connection pool)
HTTP = web.AppKey("http", aiohttp.ClientSession)
