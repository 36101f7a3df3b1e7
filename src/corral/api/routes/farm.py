"""Farm routes: printers (with their state and utilization), racks, beds, and the arm.

Printer services report `printing` here; a finished print arrives as a `ready` message
(or `POST /triggers/farm-ready/fire`).
"""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, model_validator

from corral.api.deps import CoreDep, Reader, Writer
from corral.model.farmfile import (
    MAX_RECORDS,
    RACK_WITH_SLOT,
    BedEntry,
    FarmSpec,
    PrinterEntry,
    RackEntry,
)
from corral.model.fields import Integer, Slot, Time
from corral.model.views import BedView, PrinterView, RackView, UsageView

router = APIRouter(prefix="/farm", tags=["farm"])
AFTER_FROM = "After `from` (a relation the schema cannot state: 422 otherwise)."
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$"
RecordId = Annotated[str, Path(pattern=ID_PATTERN, description="Printer, rack or bed id.")]


class PrinterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    door: str = Field(default="", max_length=63, description="The door the arm opens.")
    bed_type: str = Field(min_length=1, max_length=63)
    position: StrictFloat = Field(default=0.0, ge=-1e6, le=1e6)
    bed: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="Bed now in it; left as it is when omitted, null to empty it.",
    )


class PrinterStateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["idle", "printing", "finished", "error"]


class RackSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position: StrictFloat = Field(default=0.0, ge=-1e6, le=1e6)
    slots: Integer = Field(default=10, ge=1, le=1000)


class BedSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=RACK_WITH_SLOT)

    type: str = Field(min_length=1, max_length=63)
    state: Literal["clean", "with_part", "dirty"] = "clean"
    rack: str | None = Field(default=None, pattern=ID_PATTERN)
    slot: Slot | None = None

    @model_validator(mode="after")
    def _slot_with_rack(self) -> "BedSpec":
        if (self.rack is None) != (self.slot is None):
            raise ValueError("rack and slot go together: give both, or neither")
        return self


class RackJson(RackEntry):
    """A farm file's rack as JSON gives it (the file's own reader takes YAML's text)."""

    position: StrictFloat = Field(default=0.0, ge=-1e6, le=1e6)
    slots: Integer = Field(default=10, ge=1, le=1000)


class BedJson(BedEntry):
    slot: Slot | None = None


class PrinterJson(PrinterEntry):
    position: StrictFloat = Field(default=0.0, ge=-1e6, le=1e6)


class FarmApply(FarmSpec):
    # The entries as JSON gives them (stricter than the file reader's).
    racks: list[RackJson] = Field(  # type: ignore[assignment]
        default_factory=list, max_length=MAX_RECORDS
    )
    beds: list[BedJson] = Field(  # type: ignore[assignment]
        default_factory=list, max_length=MAX_RECORDS
    )
    printers: list[PrinterJson] = Field(  # type: ignore[assignment]
        default_factory=list, max_length=MAX_RECORDS
    )
    prune: StrictBool = Field(default=False, description="Remove records the file does not list.")


class FarmApplied(BaseModel):
    outcomes: dict[str, str] = Field(
        description='By "printer 14", "bed 801", "rack A": created, updated, unchanged, '
        "removed, or kept: <why> (in use, with --prune)."
    )


class ArmView(BaseModel):
    name: str
    status: str = Field(
        description="available, busy, error; sent (a job went out, no answer yet); "
        "presumed available (silent past the timeout); unknown before it spoke."
    )
    in_flight: int | None = Field(description="The task it is doing.")
    queued: int
    waiting_since: datetime | None = Field(description="Since when the dispatcher waits.")
    blocked: str | None = Field(
        description="What it waits for: `waiting for the arm since T: ...`; null when it "
        "does not wait."
    )


@router.put("", summary="Apply a farm file (racks, beds, printers)")
async def apply_farm(body: FarmApply, core: CoreDep, _: Writer) -> FarmApplied:
    return FarmApplied(outcomes=await core.farm.apply(body, body.prune))


@router.get("/printers", summary="List printers")
async def printers(core: CoreDep, _: Reader) -> list[PrinterView]:
    return await core.farm.printers()


@router.put(
    "/printers/{id}",
    summary="Add or change a printer",
    responses={201: {"model": PrinterView, "description": "Added"}},
)
async def put_printer(
    id: RecordId, body: PrinterSpec, core: CoreDep, _: Writer, response: Response
) -> PrinterView:
    view, created = await core.farm.put_printer(
        id, body.door, body.bed_type, body.position, body.bed, "bed" not in body.model_fields_set
    )
    response.status_code = 201 if created else 200
    return view


@router.get("/printers/{id}", summary="A printer")
async def printer(id: RecordId, core: CoreDep, _: Reader) -> PrinterView:
    return await core.farm.printer(id)


@router.put("/printers/{id}/state", summary="Report a printer's state (printing, error, ...)")
async def printer_state(
    id: RecordId, body: PrinterStateBody, core: CoreDep, _: Writer
) -> PrinterView:
    return await core.farm.set_printer_state(id, body.state)


@router.delete("/printers/{id}", status_code=204, summary="Remove a printer")
async def remove_printer(id: RecordId, core: CoreDep, _: Writer) -> Response:
    await core.farm.remove("printer", id)
    return Response(status_code=204)


@router.get("/printers/{id}/utilization", summary="Busy and idle time over an interval")
async def usage(
    id: RecordId,
    core: CoreDep,
    _: Reader,
    start: Annotated[Time | None, Query(alias="from")] = None,
    end: Annotated[Time | None, Query(alias="to", description=AFTER_FROM)] = None,
) -> UsageView:
    since, until = _interval(start, end)
    return await core.farm.usage(id, since, until)


@router.get("/utilization", summary="Every printer's busy and idle time over an interval")
async def usage_all(
    core: CoreDep,
    _: Reader,
    start: Annotated[Time | None, Query(alias="from")] = None,
    end: Annotated[Time | None, Query(alias="to", description=AFTER_FROM)] = None,
) -> list[UsageView]:
    since, until = _interval(start, end)
    return [await core.farm.usage(p.id, since, until) for p in await core.farm.printers()]


# Times outside these years count as these bounds: no printer has a history there, and the
# interval's arithmetic stays clear of datetime's limits.
EARLIEST = datetime(1971, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 1, 1, tzinfo=UTC)


def _clamp(moment: datetime) -> datetime:
    return min(max(moment.astimezone(UTC), EARLIEST), LATEST)


def _interval(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """From and to (default: the day before `to`, which defaults to now)."""
    until = _clamp(end or datetime.now(UTC))
    return (_clamp(start) if start else until - timedelta(days=1)), until


@router.get("/racks", summary="List racks")
async def racks(core: CoreDep, _: Reader) -> list[RackView]:
    return await core.farm.racks()


@router.put("/racks/{id}", summary="Add or change a rack")
async def put_rack(id: RecordId, body: RackSpec, core: CoreDep, _: Writer) -> RackView:
    return await core.farm.put_rack(id, body.position, body.slots)


@router.delete("/racks/{id}", status_code=204, summary="Remove an empty rack")
async def remove_rack(id: RecordId, core: CoreDep, _: Writer) -> Response:
    await core.farm.remove("rack", id)
    return Response(status_code=204)


@router.get("/beds", summary="List beds")
async def beds(core: CoreDep, _: Reader) -> list[BedView]:
    return await core.farm.beds()


@router.put("/beds/{id}", summary="Add or change a bed (in a rack slot)")
async def put_bed(id: RecordId, body: BedSpec, core: CoreDep, _: Writer) -> BedView:
    return await core.farm.put_bed(id, body.type, body.state, body.rack, body.slot)


@router.delete("/beds/{id}", status_code=204, summary="Remove a bed")
async def remove_bed(id: RecordId, core: CoreDep, _: Writer) -> Response:
    await core.farm.remove("bed", id)
    return Response(status_code=204)


@router.get("/arm", summary="The robot arm: last status, job in flight, queue length")
async def arm(core: CoreDep, _: Reader) -> ArmView:
    tasks = await core.tasks.open_for(core.farm.arm)
    queued = sum(t.state == "queued" for t in tasks)
    dispatch = core.farm.dispatch
    since, blocked = dispatch.waiting(queued)
    return ArmView(
        name=core.farm.arm,
        status=dispatch.status(),
        in_flight=dispatch.flight.task if dispatch.flight is not None else None,
        queued=queued,
        waiting_since=since,
        blocked=blocked,
    )
