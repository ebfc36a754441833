"""Strict JSON in: what a client sends is parsed so that we can always send it back as valid JSON.

Refused, as a client's mistake (BadRequest, never a traceback): text that is not UTF-8 JSON; `NaN`,
`Infinity`, numbers that overflow to infinity and lone UTF-16 surrogates (`"\\ud800"`), which a
strict parser rejects, or UTF-8 cannot carry, when we send them back; and documents nested deeper
than `MAX_DEPTH` (a deep one costs recursion on every later encode; `[` x 60,000 blows the parser's
stack).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from broker.core.errors import BadRequest

__all__ = ["MAX_DEPTH", "loads"]

MAX_DEPTH = 32


class _NonFinite(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NonFinite(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(f"{text} is out of range for a number")
    return value


# One decoder, built once: json.loads(..., parse_float=...) would build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def loads(raw: bytes | str, what: str = "body") -> Any:
    """Parse `raw` strictly; BadRequest (naming `what`, or the top-level field too deep) otherwise."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        value = _DECODER.decode(text)
    except RecursionError as exc:
        raise BadRequest(f"{what}: JSON nested deeper than {MAX_DEPTH} levels") from exc
    except _NonFinite as exc:
        raise BadRequest(f"{what}: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{what} is not valid JSON ({exc})") from exc
    if (field := _too_deep(value)) is not None:
        raise BadRequest(f"{field or what}: JSON nested deeper than {MAX_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(text):
        try:  # a pair decodes to one character; a lone half cannot be encoded as UTF-8 again
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            lone = ord(exc.object[exc.start])
            raise BadRequest(f"{what}: a string holds a lone UTF-16 surrogate (\\u{lone:x})") from exc
    return value


def _too_deep(value: Any) -> str | None:
    """The top-level key (or "" for the document itself) under which nesting exceeds MAX_DEPTH."""
    if not isinstance(value, dict | list):
        return None
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, top = stack.pop()
        if depth > MAX_DEPTH:
            return top
        children = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1, top or (str(key) if depth == 1 else "")))
    return None
