"""The errors corral raises on purpose, each mapped to one HTTP status.

Raised by the model's parsers, the store, the control layer and the API (errors is the
bottom layer: it imports nothing of corral's); the API turns them into
`{"error": {"code", "message", "detail"}}` responses.
"""

from typing import Any


class CorralError(Exception):
    """Base of every expected failure; `code` is stable and machine-readable."""

    status = 500
    code = "internal"

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class Invalid(CorralError):
    status = 422
    code = "invalid"


class Unauthorized(CorralError):
    status = 401
    code = "unauthorized"


class Forbidden(CorralError):
    status = 403
    code = "forbidden"


class NotFound(CorralError):
    status = 404
    code = "not_found"


class Conflict(CorralError):
    status = 409
    code = "conflict"


class TooLarge(CorralError):
    status = 413
    code = "too_large"


class Unreachable(CorralError):
    status = 503
    code = "unreachable"


class NoRoom(CorralError):
    """No host can take the work now; the caller may retry or ask to be queued."""

    status = 429
    code = "no_room"
