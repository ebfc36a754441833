"""The seed's `{"code","message","data"}` envelope, and the one place errors become HTTP."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from broker.errors import BadRequest, DomainError
from broker.store import StoreError

__all__ = ["error_middleware", "ok", "parse_body"]

log = logging.getLogger("intercom.http")
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def ok(data: Any = None) -> web.Response:
    return web.json_response({"code": 0, "message": "成功", "data": data}, dumps=_dumps)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": status, "message": message, "data": None}, status=status, headers=headers,
                             dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Read and validate a JSON body; every failure is a 400 naming the field."""
    raw = await request.read()
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"无效的请求参数: body is not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise BadRequest("无效的请求参数: body must be a JSON object")
    return model.model_validate(body)


def validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    kind = "缺少必要字段" if first["type"] == "missing" else first["msg"]
    return f"无效的请求参数: {field}: {kind}"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ValidationError as exc:
        return _error(400, validation_message(exc))
    except DomainError as exc:
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc.message)
        return _error(exc.status, exc.message, getattr(exc, "headers", None))
    except StoreError as exc:
        log.error("%s %s: database error: %s", request.method, request.path, exc)
        return _error(500, "服务器内部错误: database unavailable, nothing was changed")
    except web.HTTPRequestEntityTooLarge as exc:
        return _error(413, f"request body too large: {exc.text}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason, dict(exc.headers) if exc.status == 405 else None)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "服务器内部错误")
