"""JSON encoders for the call path, built once instead of once per call.

`json.dumps` and `JSONEncoder.encode` set up a new C encoder on every call (~2-3 µs of a 1-4 µs job
for our payloads); a call setup encodes ~10 small documents. These reuse one C encoder each and give
exactly the same text: `compact` is pydantic's `model_dump_json` layout (no spaces, UTF-8 kept),
`dumps` is `json.dumps`' default layout (what the stored JSON columns and the MQTT call reply use).
No circular-reference check: callers pass plain trees they just built.
"""

from __future__ import annotations

import json
import json.encoder as _je
from collections.abc import Callable
from typing import Any

__all__ = ["compact", "dumps"]


def _refuse(o: Any) -> Any:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _make(ensure_ascii: bool, item_sep: str, key_sep: str) -> Callable[[Any], str]:
    c_make = getattr(_je, "c_make_encoder", None)
    if c_make is None:  # no C accelerator (not CPython): the stdlib encoder, same output
        return json.JSONEncoder(ensure_ascii=ensure_ascii, separators=(item_sep, key_sep)).encode
    string = _je.encode_basestring_ascii if ensure_ascii else _je.encode_basestring
    encode = c_make(None, _refuse, string, None, key_sep, item_sep, False, False, True)

    def run(obj: Any) -> str:
        if isinstance(obj, str):
            return str(string(obj))
        return "".join(encode(obj, 0))

    return run


compact: Callable[[Any], str] = _make(False, ",", ":")
dumps: Callable[[Any], str] = _make(True, ", ", ": ")
