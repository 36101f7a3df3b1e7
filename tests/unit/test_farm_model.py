"""The farm's pure rules: cron and interval schedules, the replacement bed, the arm's job
message, utilization over an interval."""

from datetime import UTC, datetime, timedelta

import pytest

from corral.model.farm import Rack, job_message, racks_nearest, utilization
from corral.model.schedule import parse_schedule

T0 = datetime(2026, 11, 23, 20, 5, tzinfo=UTC)  # a Monday


def at(day: int, hour: int, minute: int = 0, month: int = 11, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "after", "expected"),
    [
        ("0 21 * * *", T0, datetime(2026, 11, 23, 21, 0, tzinfo=UTC)),
        ("0 21 * * *", at(23, 21), at(24, 21)),
        ("*/15 * * * *", T0, datetime(2026, 11, 23, 20, 15, tzinfo=UTC)),
        ("0 9 * * sat,sun", T0, datetime(2026, 11, 28, 9, 0, tzinfo=UTC)),
        ("0 0 1 jan *", T0, datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
        ("30 6 * * 1-5", at(27, 7), at(30, 6, 30)),
        ("0 0 * * 7", T0, datetime(2026, 11, 29, 0, 0, tzinfo=UTC)),  # 7 is Sunday too
        ("every 30s", T0, T0 + timedelta(seconds=30)),
        ("every 1m30s", T0, T0 + timedelta(seconds=90)),
        ("0 0 29 2 *", T0, datetime(2028, 2, 29, 0, 0, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_schedules_fire_when_cron_says(text: str, after: datetime, expected: datetime) -> None:
    assert parse_schedule(text).next_after(after) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 21 * *", "expected 5 cron fields"),
        ("61 * * * *", "minute '61' is not a number from 0 to 59"),
        ("* 24 * * *", "hour"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("* * * foo *", "month 'foo'"),
        ("every 0s", "from 0.1s to 366 days"),
        ("every 99999h", "from 0.1s to 366 days"),
        ("0 0 30 2 *", "never fires"),
        ("every soon", "duration"),
    ],
)
def test_bad_schedules_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def test_racks_are_searched_nearest_first_then_by_id() -> None:
    racks = [Rack("far", 0, 10), Rack("near", 38, 10), Rack("b-tie", 45, 10), Rack("a-tie", 45, 5)]
    order = [r.id for r in racks_nearest(40, racks)]
    assert order == ["near", "a-tie", "b-tie", "far"]
    assert racks_nearest(40, []) == []


def test_job_messages_have_exactly_the_seed_fields() -> None:
    take = job_message("take", "p1", "b1", "door-1", True)
    assert take == {
        "printer_id": "p1",
        "bed_id": "b1",
        "take_from_printer": True,
        "load_next_bed_without_homing": True,
        "open_doors": ["door-1"],
    }
    assert job_message("replace", "p1", "b2", "", False)["open_doors"] == []
    assert job_message("homing", "p1", "b1", "d", True) == {
        "printer_id": None,
        "bed_id": None,
        "take_from_printer": False,
        "load_next_bed_without_homing": False,
        "open_doors": [],
    }


def test_utilization_counts_printing_as_busy_within_the_interval() -> None:
    h = timedelta(hours=1)
    changes = [(T0, "idle"), (T0 + h, "printing"), (T0 + 3 * h, "finished"), (T0 + 4 * h, "idle")]
    now = T0 + 10 * h
    whole = utilization(changes, T0, now, now)
    assert (whole.busy_s, whole.idle_s) == (2 * 3600, 8 * 3600)
    assert whole.by_state == {"idle": 7 * 3600, "printing": 2 * 3600, "finished": 3600}
    part = utilization(changes, T0 + 2 * h, T0 + 3.5 * h, now)
    assert (part.busy_s, part.idle_s) == (3600, 1800)
    before = utilization(changes, T0 - 5 * h, T0, now)
    assert (before.busy_s, before.idle_s) == (0, 0)  # nothing known before the first change
    future = utilization(changes, T0 + 9 * h, T0 + 20 * h, now)
    assert future.idle_s == 3600  # not past now
