"""The print farm's pure rules: where a job's bed is looked for, the arm's job message,
utilization.
Used by the farm service (control) and unit-tested without brokers or a database.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from corral.model.arm import numeric

BUSY_STATES = ("printing",)  # what counts as busy time for utilization


@dataclass(frozen=True)
class Rack:
    id: str
    position: float
    slots: int


def racks_nearest(position: float, racks: Sequence[Rack]) -> list[Rack]:
    """The racks in the order a replace looks for its bed: nearest to the printer's
    `position` first, then by id. In each rack, the first clean, unreserved bed of the type
    the printer takes, by slot (then id), is the one (the store finds it by an index)."""
    return sorted(racks, key=lambda r: (abs(r.position - position), r.id))


def job_message(
    kind: str, printer: str | None, bed: str | None, door: str | None, next_same_printer: bool
) -> dict[str, Any]:
    """Exactly what the arm reads on robot_arm/job; numeric ids as JSON numbers, as the
    seed's jobs (`"printer_id": 14, "bed_id": 801`)."""
    if kind == "homing":
        return {
            "printer_id": None,
            "bed_id": None,
            "take_from_printer": False,
            "load_next_bed_without_homing": False,
            "open_doors": [],
        }
    return {
        "printer_id": numeric(printer),
        "bed_id": numeric(bed),
        "take_from_printer": kind == "take",
        "load_next_bed_without_homing": next_same_printer,
        "open_doors": [door] if door else [],
    }


@dataclass(frozen=True)
class Usage:
    busy_s: float
    idle_s: float
    by_state: dict[str, float]


def utilization(
    changes: Sequence[tuple[datetime, str]], start: datetime, end: datetime, now: datetime
) -> Usage:
    """Time in each state within [start, end) from the ordered state changes (time, new
    state); time before the first change and after `now` is not counted."""
    end = min(end, now)
    by_state: dict[str, float] = {}
    for index, (since, state) in enumerate(changes):
        until = changes[index + 1][0] if index + 1 < len(changes) else now
        lo, hi = max(since, start), min(until, end)
        if hi > lo:
            by_state[state] = by_state.get(state, 0.0) + (hi - lo).total_seconds()
    busy = sum(v for k, v in by_state.items() if k in BUSY_STATES)
    idle = sum(v for k, v in by_state.items() if k not in BUSY_STATES)
    return Usage(busy, idle, by_state)
