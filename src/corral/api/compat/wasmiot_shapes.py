"""The Wasm-IoT API's shapes: the OpenAPI schemas of the bodies its routes read themselves,
the translation of its requests (JSON or forms) to corral's calls, and of corral's views to
the orchestrator's documents (docs/wasmiot-protocol.md).
"""

import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from corral.control.devices import MAX_ADDRESSES, device_url
from corral.control.modules import functions_of
from corral.errors import Invalid
from corral.model.manifests import MAX_STEPS
from corral.model.views import DeploymentView, DeviceView, ModuleView
from corral.model.wasm_modules import NAME, bracketed_fields

MAX_LOG = 16_384
PORT_TEXT = (
    r"^([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
)


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
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


UPLOAD = {
    "type": "object",
    "required": ["name", "module"],
    "properties": {
        "name": WASM_NAME,
        "module": {"type": "string", "format": "binary", "contentMediaType": "application/wasm"},
    },
}


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


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


async def multipart(
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


def json_object(raw: str | bytes, what: str) -> dict[str, Any]:
    """`raw` read as one JSON object; refused as `what` when it is not."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise Invalid(f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise Invalid(f"{what} must be a JSON object")
    return data


async def read_body(request: Request) -> dict[str, Any]:
    """A JSON object, or form fields, from the request body (the seed accepts both)."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json") or not kind:
        raw = await request.body()
        if not raw:
            return {}
        return json_object(raw, "the body")
    if kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        async with request.form() as form:
            return {k: v for k, v in form.items() if isinstance(v, str)}
    raise Invalid(f"unsupported content type {kind!r}: send JSON or a form")


@dataclass(frozen=True)
class Registration:
    """A device's announcement, as corral's device service takes it."""

    name: str
    addresses: list[str]
    port: int
    path: str
    tls: bool


def registration(body: dict[str, Any], client: str) -> Registration:
    """The seed's registration body (`name`, `port`, `properties.address|path|tls`,
    `addresses` or `host`, else the caller's address `client`), checked field by field."""
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
    tls = str(properties.get("tls", "0")) in ("1", "true")
    return Registration(name, addresses, int(port), path, tls)


def log_record(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON object in a supervisor's `logData` field."""
    raw = body.get("logData")
    if not isinstance(raw, str) or len(raw) > MAX_LOG:
        raise Invalid(f"logData must be a JSON string of at most {MAX_LOG} characters")
    return json_object(raw, "logData")


async def module_upload(request: Request) -> tuple[str, str, bytes]:
    """A module upload's name, file name and bytes (multipart: `name` and one file)."""
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
    return name, filename, data


async def descriptions(
    request: Request,
) -> tuple[Any, dict[str, tuple[str, bytes]]]:
    """A module's function descriptions (JSON, a `functions` JSON field, or the
    orchestrator's bracketed fields) and the data files sent with them."""
    if is_multipart(request):
        fields, files = await multipart(request)
        raw = fields.get("functions")
        if raw is None:
            functions: Any = bracketed_fields(fields)  # the orchestrator's `fibo[method]=GET`
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
        return functions, files
    return await read_body(request), {}


async def execution(request: Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    """An execution's parameters (the query, then the body's fields) and its files."""
    params: dict[str, Any] = dict(request.query_params)
    if not is_multipart(request):
        return {**params, **await read_body(request)}, {}
    fields, files = await multipart(request)
    return {**params, **fields}, {k: v for k, (_, v) in files.items()}
