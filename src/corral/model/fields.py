"""Request field types whose API description says exactly what they accept, so the
schema and the server agree (JSON integers, RFC 3339 times in query strings).

Used by request models (routes, files read by the API) and query parameters.
"""

import re
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator, Field


def _integer(value: Any) -> Any:
    """A JSON integer: 5 or 5.0, never true, "5" or 5.5 (pydantic's lax int takes the first
    two, its strict int refuses 5.0, which JSON Schema calls an integer)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    return value


def _rfc3339(value: Any) -> Any:
    """A date-time as RFC 3339 writes it (pydantic alone also takes Unix seconds: `0.5`)."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                "must be an RFC 3339 date-time with a time zone, e.g. 2026-01-01T00:00:00Z"
            ) from None
    return value


def _day(value: Any) -> Any:
    """A date as RFC 3339 writes it: YYYY-MM-DD (pydantic alone also takes Unix seconds)."""
    if isinstance(value, str):
        if not DAY.match(value):
            raise ValueError("must be a date as YYYY-MM-DD")
        return date.fromisoformat(value)
    return value


DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
Integer = Annotated[int, BeforeValidator(_integer)]
# A rack slot (1 to 1000) as an Integer: the bounds go first, or inside `| None` the
# schema would carry them as unknown keywords.
Slot = Annotated[int, Field(ge=1, le=1000), BeforeValidator(_integer)]
Day = Annotated[date, BeforeValidator(_day)]
Time = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339),
    Field(description="RFC 3339, with a time zone: 2026-01-01T00:00:00Z"),
]
