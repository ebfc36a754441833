"""The integrator view across sites: `intercom-broker integrator --config integrator.yaml` (docs/scale-out.md).

A small aiohttp app, separate from any site: it holds a list of sites (id, REST base URL, the site's admin token
from an environment variable), fans out to them concurrently and shows one table; it proxies read-only admin views
of one site. One module per job: `config` (the file), `auth` (its own token), `fanout` (probing the sites),
`proxy` (one site's views), `app` (routes, envelope, the page), `cli` (the command).
"""
