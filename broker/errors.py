"""Domain errors. Each carries the HTTP status it maps to; REST and MQTT both report `status`."""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Busy",
    "Conflict",
    "DomainError",
    "Forbidden",
    "NotFound",
    "Overloaded",
    "Unauthorized",
]


class DomainError(Exception):
    """Root of every error a caller can cause; `status` is the HTTP code and the wire `code`."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(DomainError):
    status = 400


class Unauthorized(DomainError):
    status = 401


class Forbidden(DomainError):
    status = 403


class NotFound(DomainError):
    status = 404


class Conflict(DomainError):
    status = 409


class Busy(Conflict):
    """The device or household is already in a call."""


class Overloaded(DomainError):
    status = 503
