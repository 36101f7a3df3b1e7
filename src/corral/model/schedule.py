"""Schedules for triggers: five-field cron expressions (`0 21 * * *`) or intervals (`every 30s`).

Pure: `parse_schedule` validates, `Schedule.next_after` gives the next firing time (UTC).
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from corral.model.compose import parse_duration

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 6))  # fmt: skip
_NAMES = {
    "month": ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    "day of week": ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}
_STEP = re.compile(r"^(?P<range>[^/]+)(?:/(?P<step>\d+))?$")


@dataclass(frozen=True)
class Schedule:
    text: str
    interval_s: float | None = None
    minutes: frozenset[int] = frozenset()
    hours: frozenset[int] = frozenset()
    days: frozenset[int] = frozenset()
    months: frozenset[int] = frozenset()
    weekdays: frozenset[int] = frozenset()
    any_day: bool = True  # day of month is *
    any_weekday: bool = True  # day of week is *

    def next_after(self, moment: datetime) -> datetime:
        """The first firing strictly after `moment` (an aware datetime)."""
        if self.interval_s is not None:
            return moment + timedelta(seconds=self.interval_s)
        start = moment.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for _ in range(8 * 366):  # 8 years hold every 29 February
            if day.month in self.months and self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        at = day.replace(hour=hour, minute=minute)
                        if at >= start:
                            return at
            day += timedelta(days=1)
        raise ValueError(f"schedule {self.text!r} never fires")

    def _day_matches(self, at: datetime) -> bool:
        weekday = (at.weekday() + 1) % 7  # cron: 0 is Sunday
        in_days, in_week = at.day in self.days, weekday in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day:
            return in_week
        if self.any_weekday:
            return in_days
        return in_days or in_week  # cron's rule when both are restricted


def parse_schedule(text: str) -> Schedule:
    """`every 10s` / `every 5m`, or cron `m h dom mon dow` with *, lists, ranges, steps and
    month/day names; ValueError says what is wrong."""
    cleaned = " ".join(text.split())
    if cleaned.lower().startswith("every "):
        seconds = parse_duration(cleaned[6:].strip())
        if not 0.1 <= seconds <= 366 * 86400:
            raise ValueError(f"schedule {text!r}: an interval must be from 0.1s to 366 days")
        return Schedule(cleaned, interval_s=seconds)
    parts = cleaned.split(" ")
    if len(parts) != 5:
        raise ValueError(
            f"schedule {text!r}: expected 5 cron fields (minute hour day month weekday) "
            "or 'every <duration>'"
        )
    sets = [_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(0 if d == 7 else d for d in sets[4])
    found = Schedule(
        cleaned,
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=weekdays,
        any_day=parts[2] == "*",
        any_weekday=parts[4] == "*",
    )
    found.next_after(datetime(2000, 1, 1, tzinfo=UTC))  # ValueError if it never fires
    return found


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    top = 7 if name == "day of week" else high  # 7 is Sunday too
    out: set[int] = set()
    for item in text.split(","):
        match = _STEP.match(item)
        if not match:
            raise ValueError(f"cron {name} {item!r} is not valid")
        span, step = match["range"], int(match["step"] or 1)
        if step < 1:
            raise ValueError(f"cron {name} {item!r}: the step must be at least 1")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, b = span.split("-", 1)
            first, last = _value(a, name, low, top), _value(b, name, low, top)
            if first > last:
                raise ValueError(f"cron {name} {item!r}: the range runs backwards")
        else:
            first = _value(span, name, low, top)
            last = first if match["step"] is None else high
        out.update(range(first, last + 1, step))
    return frozenset(out)


def _value(text: str, name: str, low: int, high: int) -> int:
    names = _NAMES.get(name, [])
    if text.lower() in names:
        return names.index(text.lower()) + (1 if name == "month" else 0)
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"cron {name} {text!r} is not a number from {low} to {high}")
    return int(text)
