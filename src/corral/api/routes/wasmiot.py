"""The Wasm-IoT API (devices, modules, manifests, execute, device logs) with the shapes of
docs/wasmiot-protocol.md, plus `/devices/{name}/deployments` for a device's own token.

Served on corral's port with a token, and on `wasmiot_port` (anonymous if allowed).
"""

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, Security
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from starlette.datastructures import UploadFile

from corral.api.deps import CoreDep, bearer
from corral.control.access import Action, Caller
from corral.control.devices import MAX_ADDRESSES, device_url
from corral.control.modules import functions_of
from corral.core import Core
from corral.errors import Forbidden, Invalid
from corral.model.events import EventFilter
from corral.model.fields import Day, Time
from corral.model.manifests import MAX_STEPS
from corral.model.views import DeploymentView, DeviceView, ModuleView
from corral.model.wasm_modules import NAME, bracketed_fields, openapi

router = APIRouter(tags=["Wasm-IoT"])
Ref = Annotated[str, Path(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.-]+$")]
MAX_LOG = 16_384
PORT_TEXT = (
    r"^([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
)


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a route that reads its body itself (JSON, or a form for the seed)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


WASM_NAME = {"type": "string", "pattern": NAME.pattern}
TEXT = {"type": "string", "minLength": 1}
STEP = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "device": {"anyOf": [TEXT, {"type": "null"}]},
        "module": TEXT,
        "func": TEXT,
        "failovers": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["module", "func"],
}
MANIFEST = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": WASM_NAME,
        "sequence": {"type": "array", "items": STEP, "minItems": 1, "maxItems": MAX_STEPS},
    },
    "required": ["name", "sequence"],
}
# A host name (labels of 1 to 63 letters, digits or '-') or an IP address.
# A host name: labels of letters, digits and '-'; the last starts with a letter, as a URL
# parser reads a name ending in a number as an IPv4 address.
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
TOP = r"[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME = {"type": "string", "maxLength": 253, "pattern": rf"^({LABEL}\.)*{TOP}$"}
ADDRESS = {
    "anyOf": [
        {"type": "string", "format": "ipv4"},
        {"type": "string", "format": "ipv6"},
        HOST_NAME,
    ]
}
REGISTRATION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": WASM_NAME,
        "type": {},
        "port": {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": PORT_TEXT},
            ]
        },
        "properties": {
            "type": ["object", "null"],
            "properties": {
                "address": {"anyOf": [ADDRESS, {"const": ""}]},
                "path": {"type": "string", "maxLength": 255},
            },
        },
        # none (or empty): the host, else the address the request came from
        "addresses": {
            "type": ["array", "null"],
            "items": ADDRESS,
            "maxItems": MAX_ADDRESSES,
        },
        "host": {"anyOf": [ADDRESS, {"const": ""}, {"type": "null"}]},
    },
    "required": ["name"],
}
FUNCTIONS = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "properties": {
            "method": {"type": "string", "enum": ["GET", "POST"]},
            "parameters": {"type": "array", "items": {"type": "object"}},
            "output": {"type": "string"},
            "mounts": {"type": "array", "items": {"type": "object"}},
        },
    },
}
ARGUMENTS = {"type": "object", "additionalProperties": {"type": ["integer", "number", "string"]}}


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


def device_document(row: DeviceView) -> dict[str, Any]:
    return {
        "_id": row.name,
        "name": row.name,
        "url": device_url(row),
        "communication": {"addresses": row.addresses, "port": row.port},
        "description": row.description,
        "status": row.status,
        "blacklisted": row.blacklisted,
        "source": row.source,
        "okHealthCheckCount": row.ok_checks,
        "failedHealthCheckCount": row.failed_checks,
        "statusLog": list(reversed(row.status_log)),
        "health": row.health,
        "lastError": row.last_error,
    }


def module_document(row: ModuleView) -> dict[str, Any]:
    return {
        "_id": row.id,
        "name": row.name,
        "exports": [
            {"name": e["name"], "parameterCount": e["parameterCount"]} for e in row.exports
        ],
        "requirements": row.requirements,
        "wasm": {"sha256": row.sha256, "size": row.size},
        "dataFiles": row.files,
        "functions": functions_of(row),
        "createdAt": row.created_at.isoformat(),
    }


def deployment_document(row: DeploymentView) -> dict[str, Any]:
    return {
        "_id": row.id,
        "name": row.name,
        "sequence": row.sequence,
        "state": row.state,
        "reason": row.reason,
        "steps": [
            {k: s[k] for k in ("device", "module_id", "module_name", "func", "failovers")}
            for s in row.steps
        ],
        "fullManifest": row.parts,
        "deviceResponses": row.responses,
        "createdAt": row.created_at.isoformat(),
        "updatedAt": row.updated_at.isoformat(),
    }


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


async def _multipart(
    request: Request,
) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """A multipart body's text fields, and its files as (content type, bytes) by name."""
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    async with request.form() as form:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                kind = value.content_type or "application/octet-stream"
                files[key] = (kind, await value.read())
            else:
                fields[key] = value
    return fields, files


async def _body(request: Request) -> dict[str, Any]:
    """A JSON object, or form fields, from the request body (the seed accepts both)."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json") or not kind:
        raw = await request.body()
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            raise Invalid("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise Invalid("the body must be a JSON object")
        return data
    if kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        async with request.form() as form:
            return {k: v for k, v in form.items() if isinstance(v, str)}
    raise Invalid(f"unsupported content type {kind!r}: send JSON or a form")


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
    openapi_extra=_json_body(REGISTRATION),
)
async def register(request: Request, core: CoreDep, _: Writer) -> Response:
    body = await _body(request)
    unknown = set(body) - {"name", "type", "port", "properties", "addresses", "host"}
    if unknown:
        raise Invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
    name = body.get("name")
    if not isinstance(name, str):
        raise Invalid("name is required (the device's name)", {"field": "name"})
    port = body.get("port", 5000)
    if isinstance(port, float) and port.is_integer():
        port = int(port)  # JSON's 5000.0 is the integer 5000
    if isinstance(port, bool) or not isinstance(port, int | str) or not str(port).isdigit():
        raise Invalid(f"port must be a number, not {port!r}", {"field": "port"})
    host = body.get("host")
    if host is not None and not isinstance(host, str):
        raise Invalid("host must be a host name or an address", {"field": "host"})
    properties = body.get("properties")
    properties = {} if properties is None else properties
    if not isinstance(properties, dict):
        raise Invalid("properties must be an object", {"field": "properties"})
    client = request.client.host if request.client else "127.0.0.1"
    addresses = body.get("addresses")
    addresses = addresses if addresses not in (None, []) else [host or client]
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise Invalid("addresses must be a list of addresses", {"field": "addresses"})
    extra = properties.get("address")
    if extra is not None and not isinstance(extra, str):
        raise Invalid("properties.address must be an address", {"field": "properties.address"})
    if extra:  # first: devices may share a host name
        addresses = [extra, *(a for a in addresses if a != extra)]
    path = properties.get("path", "/")
    if not isinstance(path, str):
        raise Invalid("properties.path must be a URL path", {"field": "properties.path"})
    await core.devices.register(
        name,
        addresses,
        int(port),
        "register",
        path,
        str(properties.get("tls", "0")) in ("1", "true"),
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


UPLOAD = {
    "type": "object",
    "required": ["name", "module"],
    "properties": {
        "name": WASM_NAME,
        "module": {"type": "string", "format": "binary", "contentMediaType": "application/wasm"},
    },
}


@router.post(
    "/file/module",
    status_code=201,
    summary="Upload a module (multipart name + .wasm)",
    openapi_extra={
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": UPLOAD}}}
    },
)
async def upload(request: Request, core: CoreDep, _: Writer) -> JSONResponse:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Invalid("send multipart/form-data with a `name` field and the .wasm file")
    async with request.form() as form:
        name = form.get("name")
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if not isinstance(name, str):
            raise Invalid("the `name` field is missing", {"field": "name"})
        if len(files) != 1:
            raise Invalid(f"send exactly one .wasm file, not {len(files)}", {"field": "module"})
        data = await files[0].read()
        filename = files[0].filename or "module.wasm"
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
    openapi_extra=_json_body(FUNCTIONS),
)
async def describe(ref: Ref, request: Request, core: CoreDep, _: Writer) -> dict[str, Any]:
    files: dict[str, tuple[str, bytes]] = {}
    if _is_multipart(request):
        fields, files = await _multipart(request)
        raw = fields.get("functions")
        if raw is None:
            functions = bracketed_fields(fields)  # the orchestrator's `fibo[method]=GET`
            if not functions:
                raise Invalid(
                    "multipart descriptions need a `functions` JSON field, or fields "
                    "named func[method], func[param0], func[output]"
                )
        else:
            try:
                functions = json.loads(raw)
            except ValueError:
                raise Invalid("the `functions` field is not valid JSON") from None
    else:
        functions = await _body(request)
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
    openapi_extra=_json_body(MANIFEST),
)
async def create_manifest(request: Request, core: CoreDep, _: Writer) -> PlainTextResponse:
    """A taken name replaces that deployment (its id stays); 201 either way, as the seed."""
    row, _created = await core.deployments.create(await _body(request))
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
    openapi_extra=_json_body(MANIFEST),
)
async def update_manifest(ref: Ref, request: Request, core: CoreDep, _: Writer) -> JSONResponse:
    return _deployed(await core.deployments.update(ref, await _body(request)))


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
    openapi_extra=_json_body(ARGUMENTS),
)
async def execute(ref: Ref, request: Request, core: CoreDep, _: Writer) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query_params)
    files: dict[str, tuple[str, bytes]] = {}
    if _is_multipart(request):
        fields, files = await _multipart(request)
        params.update(fields)
    else:
        params.update(await _body(request))
    return await core.deployments.execute(ref, params, {k: v for k, (_, v) in files.items()})


LOG_SAVED = {"message": "Log received and saved"}


LOG_RECORD = {
    "type": "object",
    "required": ["logData"],
    "properties": {
        "logData": {
            "type": "string",
            "maxLength": MAX_LOG,
            "contentMediaType": "application/json",
            "description": "A JSON object: deviceName, message, logLevel, ...",
        }
    },
}


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
    body = await _body(request)
    raw = body.get("logData")
    if not isinstance(raw, str) or len(raw) > MAX_LOG:
        raise Invalid(f"logData must be a JSON string of at most {MAX_LOG} characters")
    try:
        entry = json.loads(raw)
    except ValueError:
        raise Invalid("logData is not valid JSON") from None
    if not isinstance(entry, dict):
        raise Invalid("logData must be a JSON object")
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
