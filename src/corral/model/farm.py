"""The print farm's pure rules: which bed a job uses, the arm's job message, utilization.

Used by the farm service (control) and unit-tested without brokers or a database.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from corral.model.arm import numeric

BUSY_STATES = ("printing",)  # what counts as busy time for utilization


@dataclass(frozen=True)
class Printer:
    id: str
    state: str
    door: str
    bed_type: str
    bed: str | None  # the bed in it
    position: float  # along the arm's rail, for "nearest"


@dataclass(frozen=True)
class Bed:
    id: str
    type: str
    state: str
    printer: str | None  # where it is: in a printer ...
    rack: str | None  # ... or in a rack slot
    slot: int | None
    reserved_for: str | None  # a replace task's printer


@dataclass(frozen=True)
class Rack:
    id: str
    position: float
    slots: int


def choose_replacement(printer: Printer, beds: Sequence[Bed], racks: Sequence[Rack]) -> Bed | None:
    """The nearest clean, unreserved bed in a rack that is of the type the printer takes."""
    where = {r.id: r.position for r in racks}
    fitting = [
        b
        for b in beds
        if b.type == printer.bed_type
        and b.state == "clean"
        and b.reserved_for is None
        and b.printer is None
        and b.rack in where
    ]
    if not fitting:
        return None
    return min(
        fitting,
        key=lambda b: (
            abs(where[b.rack or ""] - printer.position),
            b.rack or "",
            b.slot or 0,
            b.id,
        ),
    )


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
