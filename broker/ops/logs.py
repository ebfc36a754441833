"""Log output: plain text or one JSON object per line, on stderr and optionally a size-rotated file.

JSON lines carry `call_id`, `client_id` and `principal` where they apply: from the record's `extra`
(`log.info(..., extra={"call_id": ...})`), else `principal` from the REST request being served
(`PRINCIPAL_VAR`, set by the audit middleware) and `call_id` found in the message (call ids have one shape).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
from typing import Any

from broker.config import LoggingConfig
from broker.log_context import PRINCIPAL_VAR

__all__ = ["PRINCIPAL_VAR", "JsonFormatter", "set_level", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("call_id", "client_id", "principal")
_CALL_ID = re.compile(r"\bcall-\d{8}-[0-9a-f]{12}\b")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": message,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if "principal" not in out and (p := PRINCIPAL_VAR.get()) is not None:
            out["principal"] = p
        if "call_id" not in out and (m := _CALL_ID.search(message)) is not None:
            out["call_id"] = m.group(0)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(cfg: LoggingConfig, level: str) -> None:
    """Replace the root logger's handlers: stderr, plus `cfg.file` rotated at `cfg.max_bytes`."""
    formatter: logging.Formatter = JsonFormatter() if cfg.format == "json" else logging.Formatter(TEXT_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if cfg.file is not None:
        cfg.file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(cfg.file, maxBytes=cfg.max_bytes,
                                                             backupCount=cfg.backups, encoding="utf-8"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level)
    # amqtt logs every connection at INFO; at site scale that drowns ours.
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    logging.getLogger("amqtt").setLevel(quiet)
    logging.getLogger("transitions").setLevel(quiet)
