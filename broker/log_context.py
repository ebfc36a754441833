"""Who is being served, for log lines: set by the REST adapter, read by the log formatter (broker/ops/logs.py).

A neutral piece so the adapter that knows the caller and the assembly that formats the lines need not import
each other.
"""

from __future__ import annotations

import contextvars

__all__ = ["PRINCIPAL_VAR"]

# "role:id" of the REST caller whose request is being handled (unset outside a request)
PRINCIPAL_VAR: contextvars.ContextVar[str | None] = contextvars.ContextVar("intercom_principal", default=None)
