"""The seed's `{"code","message","data"}` envelope, and the one place errors become HTTP.

Every error message is `"<category>: <detail>"` (broker.core.errors.error_text); `data` is null, or
`{"reason": ...}` for errors that carry a machine-readable reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from broker.core import wirejson
from broker.core.errors import BadRequest, DomainError, error_text
from broker.core.ids import validation_detail
from broker.core.store import StoreError

__all__ = ["error_middleware", "ok", "parse_body", "parse_query"]

log = logging.getLogger("intercom.http")
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def ok(data: Any = None) -> web.Response:
    return web.json_response({"code": 0, "message": "成功", "data": data}, dumps=_dumps)


def error_response(status: int, detail: str, reason: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    data = {"reason": reason} if reason is not None else None
    return web.json_response({"code": status, "message": error_text(status, detail), "data": data},
                             status=status, headers=headers, dumps=_dumps)


def _dumps(obj: Any) -> str:
    # allow_nan=False: never emit a NaN/Infinity a strict parser rejects (inputs refuse them already)
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Read and validate a JSON body; every failure is a 400 naming the field."""
    raw = await request.read()
    body = wirejson.loads(raw or b"{}")
    if not isinstance(body, dict):
        raise BadRequest("body: must be a JSON object")
    return model.model_validate(body)


def parse_query(request: web.Request, model: type[M]) -> M:
    """Validate the query string; an empty value (`?device_id=`) counts as absent."""
    return model.model_validate({k: v for k, v in request.query.items() if v != ""})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ValidationError as exc:
        return error_response(400, validation_detail(exc))
    except DomainError as exc:
        if exc.status >= 500:
            # 502-504 report a device or the box's load, 507 a full disk: not a server fault
            level = logging.WARNING if exc.status in (502, 503, 504, 507) else logging.ERROR
            log.log(level, "%s %s: %s", request.method, request.path, exc.detail)
        return error_response(exc.status, exc.detail, exc.reason, getattr(exc, "headers", None))
    except StoreError as exc:
        log.error("%s %s: database error: %s", request.method, request.path, exc)
        return error_response(500, "database unavailable, nothing was changed")
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, f"request body too large: {exc.text}")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(405, f"{request.method} is not allowed on {request.path}; allowed: {allowed}",
                              headers={"Allow": allowed})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = f"no route {request.method} {request.path}" if exc.status == 404 else exc.reason
        return error_response(exc.status, detail)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal error")
