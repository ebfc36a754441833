"""Domain errors. Each carries the HTTP status it maps to; REST and MQTT both report `status`.

Every error text on the wire, REST or MQTT, is `"<category>: <detail>"`: the seed's category text for
the status (`CATEGORY`, docs/protocol.md "Errors"), then an English detail naming the field or the
reason. Where one status has several meanings a client must tell apart, the error also carries a
stable machine-readable `reason` (REST: `data.reason`; MQTT: `error.reason`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

__all__ = [
    "CATEGORY",
    "BadRequest",
    "Busy",
    "Conflict",
    "DomainError",
    "Forbidden",
    "NotFound",
    "Overloaded",
    "Unauthorized",
    "error_text",
]

# 400, 404 and 500 are the seed's own texts; the others are chosen in the same language.
CATEGORY: dict[int, str] = {
    400: "无效的请求参数",
    401: "未授权",
    403: "禁止访问",
    404: "资源不存在",
    405: "方法不允许",
    409: "状态冲突",
    413: "请求体过大",
    415: "不支持的媒体类型",
    429: "请求过于频繁",
    500: "服务器内部错误",
    502: "设备错误",
    503: "服务暂不可用",
    504: "设备响应超时",
    507: "存储空间不足",
}


def error_text(status: int, detail: str) -> str:
    """The wire text of an error: its status's category, ": ", then the English detail."""
    category = CATEGORY.get(status, CATEGORY[500] if status >= 500 else CATEGORY[400])
    return f"{category}: {detail}"


class DomainError(Exception):
    """Root of every error a caller can cause; `status` is the HTTP code and the wire `code`."""

    status = 500
    default_reason: str | None = None

    def __init__(self, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason if reason is not None else self.default_reason

    @property
    def message(self) -> str:
        return error_text(self.status, self.detail)


class BadRequest(DomainError):
    status = 400


class Unauthorized(DomainError):
    status = 401
    # RFC 7235 §4.1 / RFC 6750 §3: a 401 names the scheme the client must use
    headers: ClassVar[Mapping[str, str]] = MappingProxyType({"WWW-Authenticate": 'Bearer realm="intercom-broker"'})


class Forbidden(DomainError):
    status = 403


class NotFound(DomainError):
    status = 404


class Conflict(DomainError):
    """409; `reason` is one of `busy`, `call_ended`, `invalid_transition`, `already_exists`, `not_empty`, `dnd`."""

    status = 409


class Busy(Conflict):
    """The device or household is already in a call."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, "busy")


class Overloaded(DomainError):
    """503; `reason` is `overloaded` (call admission, with Retry-After) or `not_ready` (starting up)."""

    status = 503
    default_reason = "overloaded"
