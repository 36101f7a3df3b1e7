"""Fleet routes: robots and credentials, maps, missions, commands and broadcasts, traffic,
and the robots' own channels (WebSocket `/fleet/ws` and the HTTP variant).

Operators use the first group with their tokens; a robot's token reaches only the robot
channel routes of that robot (docs/fleet-protocol.md).
"""

import json
import secrets
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response, Security, WebSocket
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from corral.api.deps import CoreDep, Reader, Writer, bearer
from corral.api.links import answer_links
from corral.api.robot_session import serve_robot
from corral.api.streams import EVENT_STREAM, event_stream
from corral.control.access import Caller
from corral.core import Core
from corral.errors import Conflict, Forbidden, Invalid
from corral.fleet.missions import mission_doc
from corral.fleet.service import MAX_COMMAND_ID, OPERATOR_KINDS
from corral.model.fields import Integer
from corral.model.names import NAME_PATTERN

router = APIRouter(prefix="/fleet", tags=["fleet"])
RobotName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63)]


# A start marker needs a map (the schema says so: no marker, or a map beside it).
MARKER_WITH_MAP: dict[str, Any] = {
    "anyOf": [
        {"properties": {"marker": {"type": "null"}}},
        {"required": ["map"], "properties": {"map": {"type": "string"}}},
    ]
}


# A map, a robot on it and a mission there: examples that work one after the other.
CORRIDOR = {
    "name": "corridor",
    "markers": [{"id": "A", "x": 0, "y": 0}, {"id": "B", "x": 2, "y": 0}],
    "lanes": [["A", "B"]],
}


class RobotRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            **MARKER_WITH_MAP,
            "examples": [{"name": "r1", "map": "corridor", "marker": "A"}],
        },
    )

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    group: str = Field(default="", max_length=63)
    priority: Integer = Field(default=0, ge=-1000, le=1000)
    signed: StrictBool = Field(default=False, description="Every message carries an HMAC.")
    map: str | None = Field(default=None, max_length=63)
    marker: str | None = Field(default=None, max_length=63, description="Where it stands now.")


class ActionRequest(BaseModel):
    """A VDA 5050 node action at the goal (pick, drop, or what the vehicle offers)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$", description="e.g. pick, drop")
    parameters: dict[str, str | float | bool] = Field(
        default_factory=dict, max_length=20, description="actionParameters, key -> value"
    )
    blocking: Literal["NONE", "SOFT", "HARD"] = "HARD"


class MissionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"robot": "r1", "goal": "B"}]}
    )

    robot: str = Field(pattern=NAME_PATTERN, max_length=63)
    goal: str = Field(min_length=1, max_length=63, description="The destination marker.")
    objective: str = Field(default="", max_length=2000, description="What to do there.")
    actions: list[ActionRequest] = Field(
        default_factory=list,
        max_length=10,
        description="Done at the goal, in order (VDA 5050 vehicles only); the mission is "
        "done once each has FINISHED, failed if one FAILED.",
    )


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        description="stop, resume, estop or custom",
        json_schema_extra={"enum": list(OPERATOR_KINDS)},  # checked by the service
    )
    payload: dict[str, Any] = Field(default_factory=dict)


class BroadcastRequest(CommandRequest):
    group: str | None = Field(default=None, max_length=63, description="None: every robot.")


# The robot channel's HTTP bodies, as the fleet service checks them (docs/fleet-protocol.md);
# read raw, as the signature covers the bytes' JSON. `n` and `sig` are the signature's.
def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _number(low: float, high: float) -> dict[str, Any]:
    return _nullable({"type": "number", "minimum": low, "maximum": high})


MARKER = {"type": "string", "minLength": 1}
TELEMETRY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "type": {},
        "marker": _nullable(MARKER),
        "lane": _nullable(
            {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2}
        ),
        "progress": _number(0, 1),
        "distance": _number(0, 1e6),
        "battery": _number(0, 100),
        "status": _nullable({"type": "string", "maxLength": 200}),
        "n": {},
        "sig": {},
    },
    # at a marker or on a lane, not both
    "not": {
        "required": ["marker", "lane"],
        "properties": {"marker": {"type": "string"}, "lane": {"type": "array"}},
    },
}
CHECKPOINT = {"type": "object", "required": ["marker"], "properties": {"marker": MARKER}}
ACKS = {
    "type": "object",
    "required": ["ids"],
    "properties": {
        "ids": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": MAX_COMMAND_ID},
            "maxItems": 10_000,
        }
    },
}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# ----------------------------------------------------------------------------- operators


@router.post("/robots", status_code=201, summary="Register a robot; its credential, once")
async def add_robot(body: RobotRequest, core: CoreDep, caller: Writer) -> dict[str, Any]:
    row, token, key = await core.fleet.register(
        body.name, body.group, body.priority, body.signed, body.map, body.marker, caller
    )
    return {"robot": core.fleet.doc(row.name), "token": token, "key": key}


@router.get(
    "/robots",
    summary="Robots with their state and latest telemetry",
    response_model=list[dict[str, Any]],
)
async def robots(core: CoreDep, _: Reader) -> Response:
    # The documents are plain JSON already: encoded at once, not walked by FastAPI's
    # encoder and validator (at 1,000 robots that held the leader's event loop 6x longer),
    # by orjson (0.3 ms for 1,000, json.dumps 4.9 ms: a dashboard's poll stalls the loop that
    # every command waits on). Telemetry holds only checked fields (`_telemetry`).
    docs = [core.fleet.doc(name) for name in sorted(core.fleet.robots)]
    return Response(orjson.dumps(docs), media_type="application/json")


@router.get(
    "/stream",
    summary="Follow every robot's place, state and telemetry (server-sent events)",
    response_class=StreamingResponse,
    responses=EVENT_STREAM,
)
async def stream_robots(
    core: CoreDep,
    _: Reader,
    every: Annotated[
        float, Query(ge=0.1, le=10.0, description="seconds between frames (0.1-10)")
    ] = 0.5,
) -> StreamingResponse:
    # A follower passes it to the leader (api/forward.py); 503 not_leader here if this
    # replica's lead ended in between. The client's reconnect reaches the next leader.
    return event_stream(core.fleet.stream(every, core.stopping))


@router.get("/robots/{name}", summary="One robot")
async def robot(name: RobotName, core: CoreDep, _: Reader) -> dict[str, Any]:
    return core.fleet.doc(name)


@router.delete("/robots/{name}", status_code=204, summary="Remove a robot, revoke its token")
async def remove_robot(name: RobotName, core: CoreDep, caller: Writer) -> Response:
    await core.fleet.remove(name, caller)
    return Response(status_code=204)


@router.post("/robots/{name}/rotate", summary="A new credential (the old one stops working)")
async def rotate(name: RobotName, core: CoreDep, caller: Writer) -> dict[str, Any]:
    token, key = await core.fleet.rotate(name, caller)
    return {"token": token, "key": key}


@router.post("/robots/{name}/clear", summary="Release what an (offline) robot holds")
async def clear(name: RobotName, core: CoreDep, _: Writer) -> dict[str, Any]:
    return {"released": await core.fleet.clear(name)}


@router.post("/robots/{name}/commands", status_code=201, summary="Send a robot a command")
async def command(
    name: RobotName, body: CommandRequest, core: CoreDep, _: Writer
) -> dict[str, Any]:
    return {"id": await core.fleet.command(name, body.kind, body.payload)}


@router.get("/robots/{name}/commands/log", summary="A robot's latest commands")
async def command_log(name: RobotName, core: CoreDep, _: Reader) -> list[dict[str, Any]]:
    return await core.fleet.command_log(name)


@router.post("/broadcast", summary="stop, resume, estop or custom to every robot or a group")
async def broadcast(body: BroadcastRequest, core: CoreDep, _: Writer) -> dict[str, Any]:
    return {"robots": await core.fleet.broadcast(body.kind, body.payload, body.group)}


@router.post(
    "/maps",
    status_code=201,
    summary="Upload a map (JSON, or YAML text as application/yaml)",
    responses=answer_links(
        (200, 201),
        "name",
        ("get", "/fleet/maps/{name}", "name"),
        ("get", "/fleet/maps/{name}/traffic", "name"),
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}, "example": CORRIDOR},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def put_map(request: Request, core: CoreDep, _: Writer, response: Response) -> Any:
    raw = await request.body()
    kind = request.headers.get("content-type", "")
    if "yaml" in kind:
        data: Any = raw.decode("utf-8", errors="replace")
    else:
        try:
            data = json.loads(raw)
        except ValueError:
            raise Invalid("the map is not valid JSON (send YAML as application/yaml)") from None
    fmap, created = await core.fleet.dispatch.put_map(data, "map")
    response.status_code = 201 if created else 200
    return fmap.as_dict()


@router.get("/maps", summary="Maps")
async def maps(core: CoreDep, _: Reader) -> list[dict[str, Any]]:
    return [m.as_dict() for _, m in sorted(core.fleet.dispatch.maps.items())]


@router.get("/maps/{name}", summary="One map")
async def one_map(name: RobotName, core: CoreDep, _: Reader) -> dict[str, Any]:
    return core.fleet.dispatch.map(name).as_dict()


@router.get("/maps/{name}/traffic", summary="Who holds and who waits for what")
async def traffic(name: RobotName, core: CoreDep, _: Reader) -> dict[str, Any]:
    return core.fleet.dispatch.snapshot(name)


class MappingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    robot: str = Field(pattern=NAME_PATTERN, max_length=63)
    map: str = Field(pattern=NAME_PATTERN, max_length=63, description="The map to build.")


class MappingDone(BaseModel):
    model_config = ConfigDict(extra="forbid")

    diameter: float = Field(gt=0, le=1e6, description="The arena's diameter in metres.")
    measured_diameter: float | None = Field(
        default=None,
        gt=0,
        le=1e12,
        description="The same diameter in the robot's units; none: the widest span seen.",
    )


@router.post("/mapping", status_code=201, summary="Start mapping mode for a robot")
async def start_mapping(body: MappingRequest, core: CoreDep, _: Writer) -> dict[str, Any]:
    return await core.fleet.start_mapping(body.robot, body.map)


@router.get("/mapping", summary="Robots mapping now, and what they reported")
async def mappings(core: CoreDep, _: Reader) -> list[dict[str, Any]]:
    return [m.summary() for m in core.fleet.mapping.by_robot.values()]


@router.post("/mapping/{name}/finish", summary="Build and store the map, scaled")
async def finish_mapping(
    name: RobotName, body: MappingDone, core: CoreDep, _: Writer
) -> dict[str, Any]:
    return await core.fleet.finish_mapping(name, body.diameter, body.measured_diameter)


@router.delete("/mapping/{name}", status_code=204, summary="Stop mapping without a map")
async def cancel_mapping(name: RobotName, core: CoreDep, _: Writer) -> Response:
    core.fleet.mapping.cancel(name)
    return Response(status_code=204)


@router.post(
    "/missions",
    status_code=201,
    summary="Send a robot to a marker",
    responses=answer_links(
        (201,),
        "id",
        ("get", "/fleet/missions/{mission_id}", "mission_id"),
        ("delete", "/fleet/missions/{mission_id}", "mission_id"),
    ),
)
async def start_mission(body: MissionRequest, core: CoreDep, _: Writer) -> dict[str, Any]:
    row = core.fleet.robot(body.robot)
    if row.map is None:
        raise Conflict(f"robot {body.robot} is on no map", {"field": "robot"})
    if body.actions and (core.vda5050 is None or body.robot not in core.vda5050.by_robot):
        raise Conflict(
            f"actions at the goal need a VDA 5050 vehicle; robot {body.robot} is not one",
            {"field": "actions"},
        )
    actions = [
        {"id": f"{a.type}-{secrets.token_hex(4)}", "type": a.type}
        | {"blocking": a.blocking, "parameters": a.parameters}
        for a in body.actions
    ]
    mission = await core.fleet.dispatch.start(
        body.robot, row.map, body.goal, body.objective, actions=actions
    )
    return mission_doc(mission)


@router.get("/missions", summary="Missions, newest first")
async def missions(
    core: CoreDep,
    _: Reader,
    state: Annotated[str | None, Query(pattern="^(active|done|cancelled|failed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[dict[str, Any]]:
    return await core.fleet.missions(state, limit)


@router.get("/missions/{mission_id}", summary="One mission")
async def mission(
    mission_id: Annotated[int, Path(ge=1, le=2**53)], core: CoreDep, _: Reader
) -> dict[str, Any]:
    return await core.fleet.mission(mission_id)


@router.delete("/missions/{mission_id}", summary="Cancel a mission")
async def cancel_mission(
    mission_id: Annotated[int, Path(ge=1, le=2**53)], core: CoreDep, _: Writer
) -> dict[str, Any]:
    return mission_doc(await core.fleet.dispatch.cancel(mission_id))


# ----------------------------------------------------------------------------- robots (HTTP)


async def _robot_caller(
    name: RobotName,
    core: CoreDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Caller:
    caller = await core.access.identify(credentials.credentials if credentials else None)
    if caller.role != "robot" or caller.subject != name:
        raise Forbidden(f"only robot {name}'s own token may use its channel", {"robot": name})
    await core.fleet.known(name)
    return caller


RobotCaller = Annotated[Caller, Depends(_robot_caller)]


async def _signed_body(request: Request, core: Core, name: str) -> dict[str, Any]:
    core.fleet.meter.http.received += 1  # a robot's message: telemetry, checkpoint, acks
    raw = await request.body()
    if not raw:
        raise Invalid("send the message as a JSON object")
    try:
        body = json.loads(raw)
    except ValueError:
        raise Invalid("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object")
    core.fleet.check_signature(name, body, core.fleet.links.get(name).http_seal)
    return body


class Nonce(BaseModel):
    nonce: str = Field(description="Signed robots sign every HTTP body over it.")


@router.post("/robots/{name}/nonce", summary="A nonce for a signed robot's HTTP messages")
async def http_nonce(name: RobotName, core: CoreDep, _: RobotCaller) -> Nonce:
    return Nonce(nonce=core.fleet.http_nonce(name))


@router.post(
    "/robots/{name}/telemetry",
    status_code=204,
    summary="A robot reports (HTTP)",
    openapi_extra=_json_body(TELEMETRY),
)
async def http_telemetry(
    name: RobotName, request: Request, core: CoreDep, _: RobotCaller
) -> Response:
    body = await _signed_body(request, core, name)
    await core.fleet.telemetry(name, body)
    core.fleet.meter.http.telemetry += 1
    return Response(status_code=204)


@router.post(
    "/robots/{name}/checkpoint",
    status_code=204,
    summary="A robot reached a marker",
    openapi_extra=_json_body(CHECKPOINT),
)
async def http_checkpoint(
    name: RobotName, request: Request, core: CoreDep, _: RobotCaller
) -> Response:
    body = await _signed_body(request, core, name)
    await core.fleet.checkpoint(name, body)
    return Response(status_code=204)


@router.get("/robots/{name}/commands", summary="A robot's open commands (long poll)")
async def http_commands(
    name: RobotName,
    core: CoreDep,
    _: RobotCaller,
    after: Annotated[int, Query(ge=0, le=2**53)] = 0,
    wait: Annotated[float, Query(ge=0, le=30)] = 0,
) -> list[dict[str, Any]]:
    counts = core.fleet.meter.http
    counts.received += 1
    commands = await core.fleet.wait_commands(name, after, wait)
    counts.sent += len(commands)
    return commands


@router.post(
    "/robots/{name}/acks",
    status_code=204,
    summary="A robot acknowledges commands",
    openapi_extra=_json_body(ACKS),
)
async def http_acks(name: RobotName, request: Request, core: CoreDep, _: RobotCaller) -> Response:
    body = await _signed_body(request, core, name)
    await core.fleet.ack(name, body.get("ids"))
    return Response(status_code=204)


# ----------------------------------------------------------------------------- WebSocket


@router.websocket("/ws")
async def robot_socket(websocket: WebSocket) -> None:
    """The robots' socket when the ASGI path serves it (in-process test clients, a server
    without corral's own `ws=` protocol); `corral serve` answers `/fleet/ws` itself
    (robot_ws.py), with the same session."""
    core: Core = websocket.app.state.core
    await websocket.accept()
    await serve_robot(
        core,
        websocket,
        websocket.headers.get("authorization", ""),
        websocket.query_params.get("token"),
    )
