"""The Wasm-IoT API's routes (devices, modules, manifests, execute, device logs), translated
by wasmiot_shapes.py to corral's services and back to the shapes of docs/wasmiot-protocol.md,
plus `/devices/{name}/deployments` for a device's own token.

Served on corral's port with a token, and on `wasmiot_port` (anonymous if allowed).
"""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, Security
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials

from corral.api.compat.wasmiot_shapes import (
    ARGUMENTS,
    FUNCTIONS,
    LOG_RECORD,
    LOG_SAVED,
    MANIFEST,
    REGISTRATION,
    UPLOAD,
    deployment_document,
    descriptions,
    device_document,
    execution,
    json_body,
    log_record,
    module_document,
    module_upload,
    read_body,
    registration,
)
from corral.api.deps import CoreDep, bearer
from corral.control.access import Action, Caller
from corral.control.modules import functions_of
from corral.core import Core
from corral.errors import Forbidden
from corral.model.events import EventFilter
from corral.model.fields import Day, Time
from corral.model.views import DeploymentView, ModuleView
from corral.model.wasm_modules import openapi

router = APIRouter(tags=["Wasm-IoT"])
Ref = Annotated[str, Path(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.-]+$")]


def _caller(
    action: Action, device_ok: bool = False, open_on_port: bool = False
) -> Callable[..., Awaitable[Caller]]:
    """Who calls: a token's holder, or anyone on `wasmiot_port` when it is anonymous (and,
    with `open_on_port`, even when it is not)."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> Caller:
        core: Core = request.app.state.core
        server = request.scope.get("server")
        port = core.settings.wasmiot_port
        anonymous = core.settings.wasmiot_anonymous or open_on_port
        if anonymous and server and port and server[1] == port:
            return Caller(0, "anonymous", "operator", "")
        secret = credentials.credentials if credentials is not None else None
        if device_ok:
            caller = await core.access.identify(secret)
            if caller.role == "device":
                return caller
        return await core.access.authorize(secret, action)

    return dependency


Reader = Annotated[Caller, Depends(_caller("read"))]
Writer = Annotated[Caller, Depends(_caller("write"))]
ReaderOrDevice = Annotated[Caller, Depends(_caller("read", device_ok=True))]
# A supervisor has no token: it posts its logs to port 3000 of whoever called it, even
# before it has an orchestrator.
LogSender = Annotated[Caller, Depends(_caller("read", device_ok=True, open_on_port=True))]


# ----------------------------------------------------------------------------- devices


@router.get("/file/device", summary="All devices")
async def devices(core: CoreDep, _: Reader) -> list[dict[str, Any]]:
    return [device_document(r) for r in await core.devices.views()]


@router.delete("/file/device", summary="Forget every device")
async def forget_devices(core: CoreDep, _: Writer) -> dict[str, int]:
    return {"deletedCount": await core.devices.remove()}


@router.get("/file/device/{name}", summary="One device")
async def device(name: Ref, core: CoreDep, _: Reader) -> dict[str, Any]:
    return device_document(await core.devices.view(name))


@router.delete("/file/device/{name}", status_code=204, summary="Forget one device")
async def forget_device(name: Ref, core: CoreDep, _: Writer) -> Response:
    await core.devices.view(name)
    await core.devices.remove(name)
    return Response(status_code=204)


@router.post("/file/device/discovery/reset", status_code=204, summary="Scan again")
async def rescan(core: CoreDep, _: Writer) -> Response:
    core.devices.rescan()
    return Response(status_code=204)


@router.post(
    "/file/device/discovery/register",
    status_code=204,
    summary="A device announces itself",
    openapi_extra=json_body(REGISTRATION),
)
async def register(request: Request, core: CoreDep, _: Writer) -> Response:
    found = registration(
        await read_body(request), request.client.host if request.client else "127.0.0.1"
    )
    await core.devices.register(
        found.name, found.addresses, found.port, "register", found.path, found.tls
    )
    return Response(status_code=204)


@router.post("/file/device/{name}/blacklist", summary="Keep deployments off a device")
async def blacklist(name: Ref, core: CoreDep, _: Writer) -> dict[str, str]:
    await core.devices.blacklist(name, True)
    return {"message": f"device {name} blacklisted", "deviceId": name}


@router.post("/file/device/{name}/unblacklist", summary="Allow a device again")
async def unblacklist(name: Ref, core: CoreDep, _: Writer) -> dict[str, str]:
    await core.devices.blacklist(name, False)
    return {"message": f"device {name} removed from the blacklist", "deviceId": name}


@router.get("/devices/{name}/deployments", summary="A device's own deployments and parts")
async def device_deployments(name: Ref, core: CoreDep, caller: ReaderOrDevice) -> list[Any]:
    _own(caller, name)
    rows = await core.deployments.for_device(name)
    return [{"_id": r.id, "name": r.name, "part": r.parts.get(name)} for r in rows]


def _own(caller: Caller, device: str) -> None:
    if caller.role == "device" and caller.subject != device:
        raise Forbidden(
            f"this device token belongs to {caller.subject!r}, not {device!r}",
            {"device": device},
        )


# ----------------------------------------------------------------------------- modules


@router.post(
    "/file/module",
    status_code=201,
    summary="Upload a module (multipart name + .wasm)",
    openapi_extra={
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": UPLOAD}}}
    },
)
async def upload(request: Request, core: CoreDep, _: Writer) -> JSONResponse:
    name, filename, data = await module_upload(request)
    row, created = await core.modules.upload(name, filename, data)
    # 201 also for bytes already stored (the same id), as the orchestrator answers
    return JSONResponse({"id": row.id, "created": created}, status_code=201)


@router.get("/file/module", summary="All module versions")
async def modules(core: CoreDep, _: Reader) -> list[dict[str, Any]]:
    return [module_document(r) for r in await core.modules.views()]


@router.delete("/file/module", summary="Delete every module no deployment uses")
async def delete_modules(core: CoreDep, _: Writer) -> dict[str, int]:
    return {"deletedCount": await core.modules.delete_all()}


@router.get("/file/module/{ref}", summary="One module (an array of one); a name means its newest")
async def module(ref: Ref, core: CoreDep, _: Reader) -> list[dict[str, Any]]:
    return [module_document(await core.modules.view(ref))]


@router.delete("/file/module/{ref}", status_code=204, summary="Delete a module")
async def delete_module(ref: Ref, core: CoreDep, _: Writer) -> Response:
    await core.modules.delete(ref)
    return Response(status_code=204)


@router.post(
    "/file/module/{ref}/upload",
    summary="Describe functions, attach data files",
    openapi_extra=json_body(FUNCTIONS),
)
async def describe(ref: Ref, request: Request, core: CoreDep, _: Writer) -> dict[str, Any]:
    functions, files = await descriptions(request)
    description = await core.modules.describe(ref, functions, files)
    return {"description": description}


async def _readable(core: Core, row: ModuleView, caller: Caller) -> ModuleView:
    """The module, if the caller may read it (a device: only modules of its deployments)."""
    if caller.role == "device" and not await core.deployments.device_may_read_module(
        caller.subject, row.id
    ):
        raise Forbidden(
            f"module {row.id} is in no deployment of device {caller.subject!r}",
            {"module": row.id},
        )
    return row


@router.get("/file/module/{ref}/description", summary="The module's OpenAPI description")
async def module_description(ref: Ref, core: CoreDep, caller: ReaderOrDevice) -> dict[str, Any]:
    row = await _readable(core, await core.modules.view(ref), caller)
    return openapi(row.name, functions_of(row))


@router.get("/file/module/{ref}/wasm", summary="The module's binary")
async def module_binary(ref: Ref, core: CoreDep, caller: ReaderOrDevice) -> Response:
    row, binary = await core.modules.wasm(ref)
    await _readable(core, row, caller)
    return Response(binary, media_type="application/wasm")


@router.get("/file/module/{ref}/{file}", summary="A data file of the module")
async def module_file(ref: Ref, file: str, core: CoreDep, caller: ReaderOrDevice) -> Response:
    row = await _readable(core, await core.modules.view(ref), caller)
    media_type, data = await core.modules.file(row.id, file)
    return Response(data, media_type=media_type)


# ----------------------------------------------------------------------------- manifests


@router.post(
    "/file/manifest",
    status_code=201,
    summary="Create a deployment from a manifest",
    openapi_extra=json_body(MANIFEST),
)
async def create_manifest(request: Request, core: CoreDep, _: Writer) -> PlainTextResponse:
    """A taken name replaces that deployment (its id stays); 201 either way, as the seed."""
    row, _created = await core.deployments.create(await read_body(request))
    return PlainTextResponse(row.id, status_code=201)


@router.get("/file/manifest", summary="All deployments")
async def manifests(core: CoreDep, _: Reader) -> list[dict[str, Any]]:
    return [deployment_document(r) for r in await core.deployments.views()]


@router.delete("/file/manifest", summary="Remove every deployment")
async def delete_manifests(core: CoreDep, _: Writer) -> dict[str, int]:
    return {"deletedCount": await core.deployments.delete()}


@router.get("/file/manifest/{ref}", summary="One deployment")
async def manifest(ref: Ref, core: CoreDep, _: Reader) -> dict[str, Any]:
    return deployment_document(await core.deployments.view(ref))


@router.post("/file/manifest/{ref}", summary="Send each device its part")
async def deploy(ref: Ref, core: CoreDep, _: Writer) -> JSONResponse:
    return _deployed(await core.deployments.deploy(ref))


@router.put(
    "/file/manifest/{ref}",
    summary="Change a deployment's manifest and deploy it again",
    openapi_extra=json_body(MANIFEST),
)
async def update_manifest(ref: Ref, request: Request, core: CoreDep, _: Writer) -> JSONResponse:
    return _deployed(await core.deployments.update(ref, await read_body(request)))


@router.post(
    "/file/manifest/failover/{ref}",
    summary="Move the steps of unusable devices elsewhere and deploy again",
)
async def failover(ref: Ref, core: CoreDep, _: Writer) -> JSONResponse:
    return _deployed(await core.deployments.failover(ref))


def _deployed(row: DeploymentView) -> JSONResponse:
    body: dict[str, Any] = {"deviceResponses": row.responses, "state": row.state}
    if row.state == "deployed":
        return JSONResponse(body)
    message = f"deployment {row.name} failed: {row.reason}"
    body["error"] = {"code": "deploy_failed", "message": message, "detail": row.responses}
    return JSONResponse(body, status_code=502)


@router.delete("/file/manifest/{ref}", status_code=204, summary="Undeploy and remove")
async def delete_manifest(ref: Ref, core: CoreDep, _: Writer) -> Response:
    await core.deployments.delete(ref)
    return Response(status_code=204)


@router.post(
    "/execute/{ref}",
    summary="Run a deployment's chain; parameters by name",
    openapi_extra=json_body(ARGUMENTS),
)
async def execute(ref: Ref, request: Request, core: CoreDep, _: Writer) -> dict[str, Any]:
    params, files = await execution(request)
    return await core.deployments.execute(ref, params, files)


@router.post(
    "/device/logs",
    summary="A device reports a log record (form field logData)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": LOG_RECORD},
                "application/x-www-form-urlencoded": {"schema": LOG_RECORD},
            },
        }
    },
)
async def device_logs(request: Request, core: CoreDep, caller: LogSender) -> dict[str, str]:
    """Answers 200 `{"message": "Log received and saved"}`, as the supervisor expects (it
    rebuilds its log handler on any other answer). Kept as a `device.log` event. On
    `wasmiot_port` no token is needed, even when that port is not anonymous."""
    entry = log_record(await read_body(request))
    sender = request.client.host if request.client else ""
    name = str(entry.get("deviceName") or caller.subject or entry.get("deviceIP") or sender)[:63]
    _own(caller, name)
    message = str(entry.get("message", ""))[:2000]
    level = str(entry.get("logLevel", "INFO"))[:16]
    entry.setdefault("deviceIP", sender)
    await core.bus.emit("device.log", f"device/{name}", f"{name} [{level}] {message}", entry)
    return LOG_SAVED


@router.get("/device/logs", summary="Stored device logs; ?date= keeps those received since")
async def stored_logs(
    core: CoreDep,
    _: Reader,
    date: Annotated[
        Time | Day | None, Query(description="A day (UTC midnight) or an RFC 3339 time.")
    ] = None,
    limit: Annotated[int, Query(description="At most 10000 are returned.")] = 1000,
) -> list[dict[str, Any]]:
    since = None
    if isinstance(date, datetime):
        since = date
    elif date is not None:
        since = datetime(date.year, date.month, date.day, tzinfo=UTC)
    where = EventFilter(kind="device.log", since=since)
    events = await core.bus.query(where, limit=max(1, min(limit, 10_000)))
    return [{**e.data, "dateReceived": e.time.isoformat()} for e in events]
