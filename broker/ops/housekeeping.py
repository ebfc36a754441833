"""The background jobs that live as long as the REST app: history retention and scheduled backups, against
the store in use: intercom.db in the data dir, or the PostgreSQL database of `store.url`."""

from __future__ import annotations

import functools
from collections.abc import Coroutine
from typing import Any

from broker.backup import run_schedule
from broker.config import Settings
from broker.core.retention import run_pruner

__all__ = ["housekeeping_jobs"]


def housekeeping_jobs(s: Settings) -> list[Coroutine[Any, Any, None]]:
    """The jobs to run as tasks (each until cancelled)."""
    if s.store.url is None:
        pruned: Any = s.server.data_dir / "intercom.db"
    else:
        from broker.scale.pg_ops import prune_postgres  # psycopg: the scale extra, as the store itself
        from broker.scale.pg_store import redact

        pruned = (redact(s.store.url), functools.partial(prune_postgres, s.store.url))
    jobs = [run_pruner(pruned, s.history.retention_days, s.history.status_days, s.history.prune_interval_s,
                       s.history.prune_batch)]
    if s.backup.schedule is not None and s.backup.dir is not None:
        jobs.append(run_schedule(s.server.data_dir, s.backup.dir, s.backup.schedule, s.backup.keep, s.store.url))
    return jobs
