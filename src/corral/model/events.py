"""Which events a reader wants: the filter the events API, the live stream and the store share.

Pure: `matches` tests one event; store/events.py turns the same filter into a query.
"""

from datetime import datetime

from corral.model.views import EventView


class EventFilter:
    """Which events a reader wants; `kind` and `resource` ending in `*` match a prefix."""

    def __init__(
        self,
        kind: str | None = None,
        resource: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_id: int | None = None,
    ) -> None:
        self.kind, self.resource = kind, resource
        self.since, self.until, self.after_id = since, until, after_id

    def matches(self, event: EventView) -> bool:
        return (
            _text_matches(self.kind, event.kind)
            and _text_matches(self.resource, event.resource)
            and (self.since is None or event.time >= self.since)
            and (self.until is None or event.time <= self.until)
            and (self.after_id is None or event.id > self.after_id)
        )


def _text_matches(pattern: str | None, value: str) -> bool:
    if pattern is None:
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern
