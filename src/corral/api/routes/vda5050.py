"""VDA 5050 routes: register vehicles (robots with a manufacturer and serial number), see
what master control knows of each (connection, order, state, factsheet), and ask a vehicle
for its state or factsheet. Missions, commands and traffic are the fleet routes'."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from corral.api.deps import CoreDep, Reader, Writer
from corral.api.routes.fleet import MARKER_WITH_MAP
from corral.core import Core
from corral.errors import Conflict, Invalid
from corral.fleet.vda5050.broker_access import acl_file
from corral.fleet.vda5050.master import MasterControl
from corral.model.fields import Integer
from corral.model.names import NAME_PATTERN
from corral.model.vehiclesfile import TOPIC_LEVEL, VehicleSpec

router = APIRouter(prefix="/fleet/vda5050", tags=["fleet"])
RobotName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63)]


class VehicleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=MARKER_WITH_MAP)
    name: str = Field(pattern=NAME_PATTERN, max_length=63, description="Its robot name.")
    manufacturer: str = Field(pattern=TOPIC_LEVEL)
    serial_number: str = Field(pattern=TOPIC_LEVEL)
    group: str = Field(default="", max_length=63)
    priority: Integer = Field(default=0, ge=-1000, le=1000)
    map: str | None = Field(default=None, max_length=63)
    marker: str | None = Field(default=None, max_length=63, description="Where it stands now.")


class VehiclesApply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vehicles: list[VehicleRequest] = Field(max_length=10_000)
    prune: bool = Field(default=False, description="Remove the vehicles not listed.")


class ApplyResult(BaseModel):
    outcomes: dict[str, str] = Field(description="robot -> created, updated, unchanged, removed")


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: str = Field(description="stateRequest or factsheetRequest")


def _master(core: Core) -> MasterControl:
    if core.vda5050 is None:
        raise Conflict("VDA 5050 is off: set vda5050_broker to an mqtt:// broker of `brokers`")
    return core.vda5050


def _doc(core: Core, master: MasterControl, name: str) -> dict[str, Any]:
    return {**core.fleet.doc(name), "vda5050": master.vehicle(name).doc()}


@router.post("/vehicles", status_code=201, summary="Register a VDA 5050 vehicle as a robot")
async def add_vehicle(body: VehicleRequest, core: CoreDep, caller: Writer) -> dict[str, Any]:
    master = _master(core)
    await master.register(
        body.name,
        body.manufacturer,
        body.serial_number,
        body.group,
        body.priority,
        body.map,
        body.marker,
        caller,
    )
    return _doc(core, master, body.name)


@router.put(
    "/vehicles", summary="Make the VDA 5050 vehicles match a list (a vehicles file), idempotent"
)
async def apply_vehicles(body: VehiclesApply, core: CoreDep, caller: Writer) -> ApplyResult:
    master = _master(core)
    seen: dict[Any, int] = {}
    for index, vehicle in enumerate(body.vehicles):
        for key in (vehicle.name, (vehicle.manufacturer, vehicle.serial_number)):
            if key in seen:
                what = key if isinstance(key, str) else "/".join(key)
                raise Invalid(
                    f"vehicles[{index}]: {what} is vehicles[{seen[key]}] already",
                    {"field": f"vehicles[{index}]"},
                )
            seen[key] = index
    specs = [VehicleSpec.model_validate(v.model_dump()) for v in body.vehicles]
    return ApplyResult(outcomes=await master.apply(specs, body.prune, caller))


@router.get("/vehicles", summary="VDA 5050 vehicles with their robot state")
async def vehicles(core: CoreDep, _: Reader) -> list[dict[str, Any]]:
    master = _master(core)
    return [_doc(core, master, name) for name in sorted(master.by_robot)]


@router.get("/vehicles/{name}", summary="One VDA 5050 vehicle")
async def vehicle(name: RobotName, core: CoreDep, _: Reader) -> dict[str, Any]:
    master = _master(core)
    return _doc(core, master, name)


@router.delete("/vehicles/{name}", status_code=204, summary="Remove a VDA 5050 vehicle")
async def remove_vehicle(name: RobotName, core: CoreDep, caller: Writer) -> Response:
    await _master(core).remove(name, caller)
    return Response(status_code=204)


@router.post("/vehicles/{name}/request", status_code=202, summary="stateRequest/factsheetRequest")
async def request(name: RobotName, body: RequestBody, core: CoreDep, _: Writer) -> Response:
    await _master(core).request(name, body.action)
    return Response(status_code=202)


@router.get(
    "/mosquitto-acl",
    summary="Mosquitto acl_file: each registered vehicle on its own topics only",
    response_class=PlainTextResponse,
)
async def mosquitto_acl(
    core: CoreDep,
    _: Reader,
    corral_user: Annotated[str, Query(pattern=TOPIC_LEVEL, description="corral's user")] = "corral",
) -> PlainTextResponse:
    master = _master(core)
    vehicles = [(v.manufacturer, v.serial) for v in master.by_robot.values()]
    return PlainTextResponse(acl_file(vehicles, corral_user, master.topics))
