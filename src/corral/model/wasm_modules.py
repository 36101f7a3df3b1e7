"""WebAssembly modules as corral sees them: what a binary exports and imports, and the
description of its functions (method, parameters, output, mounts) with its OpenAPI form.

The module service validates uploads here; deployments read the requirements to place steps.
"""

import re
from dataclasses import dataclass
from typing import Any

import wasmtime

from corral.errors import Invalid

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
PARAM_TYPES = ("integer", "number", "string")
OUTPUT_TYPES = ("integer", "number", "string", "object")
MOUNT_STAGES = ("deployment", "execution", "output")
MEDIA_TYPES = {
    "integer": "application/json",
    "number": "application/json",
    "string": "application/json",
    "object": "application/json",
}

_ENGINE = wasmtime.Engine()


@dataclass(frozen=True)
class Inspected:
    """What a binary offers and needs."""

    exports: list[dict[str, Any]]
    requirements: list[dict[str, str]]


def check_wasm_name(value: object, what: str) -> str:
    """A device, module or manifest name as the Wasm-IoT protocol allows it; Invalid if not."""
    if not isinstance(value, str) or not NAME.match(value):
        raise Invalid(
            f"{what} name {value!r} must be 1-63 letters, digits, '_', '.' or '-'",
            {"field": "name"},
        )
    return value


def inspect_wasm(data: bytes, filename: str = "module") -> Inspected:
    """Compile the binary with wasmtime; refuse what does not compile, naming the file."""
    if not data.startswith(b"\0asm"):
        raise Invalid(
            f"{filename} is not a WebAssembly binary (it does not start with \\0asm)",
            {"field": "module"},
        )
    try:
        module = wasmtime.Module(_ENGINE, data)
    except wasmtime.WasmtimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid module"
        raise Invalid(
            f"{filename} is not valid WebAssembly: {first}", {"field": "module"}
        ) from None
    exports: list[dict[str, Any]] = []
    for item in module.exports:
        kind = item.type
        if isinstance(kind, wasmtime.FuncType):
            exports.append(
                {
                    "name": item.name,
                    "parameterCount": len(kind.params),
                    "params": [str(p) for p in kind.params],
                    "results": [str(r) for r in kind.results],
                }
            )
    requirements = [
        {"module": item.module, "name": item.name or ""}
        for item in module.imports
        if isinstance(item.type, wasmtime.FuncType)
    ]
    return Inspected(exports, requirements)


def missing_interfaces(requirements: list[dict[str, str]], interfaces: list[str]) -> list[str]:
    """Imports a device with these `supervisorInterfaces` cannot satisfy (WASI as a whole)."""
    offered = set(interfaces)
    return [
        f"{req['module']}.{req['name']}"
        for req in requirements
        if req["name"] not in offered and req["module"] not in offered
    ]


SEED_PARAM = re.compile(r"^param(\d+)$")
BRACKETED = re.compile(r"^([^\[\]]+)\[([^\[\]]+)\]$")


def from_seed_form(body: Any) -> Any:
    """The orchestrator's flat form of a description, `{method, param0: type, param1: ...,
    output}`, as `{method, parameters: [{name: param0, type}, ...], output}`; any other
    body as it is."""
    if not isinstance(body, dict):
        return body
    numbered = {k: v for k, v in body.items() if SEED_PARAM.match(k)}
    if not numbered:
        return body
    if "parameters" in body:
        raise Invalid("give parameters as a list or as param0, param1, ..., not both")
    ordered = sorted(numbered, key=lambda k: int(k[len("param") :]))
    rest = {k: v for k, v in body.items() if k not in numbered}
    return {**rest, "parameters": [{"name": k, "type": numbered[k]} for k in ordered]}


def bracketed_fields(fields: dict[str, str]) -> dict[str, dict[str, str]]:
    """Multipart fields `fibo[method]=GET`, `fibo[param0]=integer` as `{fibo: {method,
    param0}}` (the orchestrator's form); other fields are left out."""
    functions: dict[str, dict[str, str]] = {}
    for key, value in fields.items():
        found = BRACKETED.match(key)
        if found:
            functions.setdefault(found.group(1), {})[found.group(2)] = value
    return functions


OPENAPI_PATH = re.compile(r"^/\{deployment\}/modules/[^/]+/([^/]+)$")


def functions_from_openapi(
    description: dict[str, Any], mounts: Any, exported: set[str]
) -> dict[str, dict[str, Any]]:
    """Function descriptions read back from a module's OpenAPI document (the orchestrator
    exports that, not the form it was given), for the exported functions; `mounts` is the
    orchestrator's `{func: {mount: {stage, ...}}}`."""
    functions: dict[str, dict[str, Any]] = {}
    paths = description.get("paths")
    for path, item in (paths if isinstance(paths, dict) else {}).items():
        found = OPENAPI_PATH.match(path)
        if not found or found.group(1) not in exported or not isinstance(item, dict):
            continue
        func = found.group(1)
        method = next((m for m in ("get", "post") if isinstance(item.get(m), dict)), None)
        if method is None:
            continue
        operation = item[method]
        parameters = [
            {"name": p["name"], "type": (p.get("schema") or {}).get("type", "integer")}
            for p in operation.get("parameters", [])
            if isinstance(p, dict) and p.get("in") == "query" and isinstance(p.get("name"), str)
        ]
        content = ((operation.get("responses") or {}).get("200") or {}).get("content") or {}
        schemas = [v.get("schema") or {} for v in content.values() if isinstance(v, dict)]
        output = schemas[0].get("type") if schemas else None
        described: dict[str, Any] = {
            "method": method.upper(),
            "parameters": parameters,
            "output": output if output in OUTPUT_TYPES else "string",
        }
        own = mounts.get(func) if isinstance(mounts, dict) else None
        if isinstance(own, dict) and own:
            described["mounts"] = [
                {"name": name, "stage": (m or {}).get("stage", "deployment")}
                for name, m in own.items()
                if isinstance(m, dict) or m is None
            ]
        functions[func] = described
    return functions


def check_function(
    func: str, body: dict[str, Any], exports: list[dict[str, Any]], files: set[str]
) -> dict[str, Any]:
    """Validate one function's description against the module; return it normalised.
    The orchestrator's flat form (`param0: type`, ...) is taken too."""
    where = f"func {func!r}"
    body = from_seed_form(body)
    export = next((e for e in exports if e["name"] == func), None)
    if export is None:
        known = ", ".join(sorted(e["name"] for e in exports)) or "none"
        raise Invalid(f"{where}: the module exports no such function (exports: {known})")
    if not isinstance(body, dict):
        raise Invalid(f"{where}: the description must be an object")
    unknown = set(body) - {"method", "parameters", "output", "mounts"}
    if unknown:
        raise Invalid(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    method = str(body.get("method", "GET")).upper()
    if method not in ("GET", "POST"):
        raise Invalid(f"{where}: method must be GET or POST, not {body.get('method')!r}")
    params = body.get("parameters", [])
    if not isinstance(params, list):
        raise Invalid(f"{where}: parameters must be a list of {{name, type}}")
    seen: list[dict[str, str]] = []
    for index, param in enumerate(params):
        if not isinstance(param, dict) or set(param) - {"name", "type"} or "name" not in param:
            raise Invalid(f"{where}: parameters[{index}] must be {{name, type}}")
        name, kind = param["name"], param.get("type", "integer")
        if not isinstance(name, str) or not NAME.match(name):
            raise Invalid(f"{where}: parameters[{index}].name {name!r} is not a valid name")
        if kind not in PARAM_TYPES:
            raise Invalid(
                f"{where}: parameters[{index}].type {kind!r} is not one of {', '.join(PARAM_TYPES)}"
            )
        seen.append({"name": name, "type": kind})
    if len(seen) != export["parameterCount"]:
        raise Invalid(
            f"{where}: {len(seen)} parameter(s) described, but the function takes "
            f"{export['parameterCount']}"
        )
    output = body.get("output", "integer")
    if output not in OUTPUT_TYPES:
        raise Invalid(f"{where}: output {output!r} is not one of {', '.join(OUTPUT_TYPES)}")
    mounts = body.get("mounts", [])
    if not isinstance(mounts, list):
        raise Invalid(f"{where}: mounts must be a list of {{name, stage}}")
    normal_mounts: list[dict[str, str]] = []
    for index, mount in enumerate(mounts):
        if not isinstance(mount, dict) or set(mount) - {"name", "stage"} or "name" not in mount:
            raise Invalid(f"{where}: mounts[{index}] must be {{name, stage}}")
        stage = mount.get("stage", "deployment")
        if stage not in MOUNT_STAGES:
            raise Invalid(f"{where}: mounts[{index}].stage {stage!r} is not one of {MOUNT_STAGES}")
        if stage == "deployment" and mount["name"] not in files:
            raise Invalid(
                f"{where}: mount {mount['name']!r} is a deployment file, but no such data file "
                "is attached to the module"
            )
        normal_mounts.append({"name": str(mount["name"]), "stage": stage})
    return {"method": method, "parameters": seen, "output": output, "mounts": normal_mounts}


def endpoint_request(description: dict[str, Any]) -> dict[str, Any]:
    """The `request` part of a device endpoint, from a function description; execution
    files make a multipart body, one file per mount, named after it."""
    request: dict[str, Any] = {
        "parameters": [
            {"name": p["name"], "in": "query", "required": True, "schema": {"type": p["type"]}}
            for p in description["parameters"]
        ]
    }
    files = execution_files(description)
    if files:  # the encoding names the files, in order: a chained step sends its outputs so
        encoding = {name: {"contentType": "application/octet-stream"} for name in files}
        request["request_body"] = {"media_type": "multipart/form-data", "encoding": encoding}
    return request


def execution_files(description: dict[str, Any]) -> list[str]:
    """The files a call of this function is sent with (its execution mounts)."""
    return [m["name"] for m in description.get("mounts", []) if m["stage"] == "execution"]


def endpoint_response(description: dict[str, Any]) -> dict[str, Any]:
    return {
        "media_type": MEDIA_TYPES[description["output"]],
        "schema": {"type": description["output"]},
    }


def _multipart(files: list[str]) -> dict[str, Any]:
    if not files:
        return {}
    schema = {
        "type": "object",
        "properties": {name: {"type": "string", "format": "binary"} for name in files},
        "required": files,
    }
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


def openapi(module: str, functions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of a module's functions, as a device would serve them."""
    paths: dict[str, Any] = {}
    for func, description in sorted(functions.items()):
        request = endpoint_request(description)
        response = endpoint_response(description)
        paths[f"/{{deployment}}/modules/{module}/{func}"] = {
            description["method"].lower(): {
                "summary": f"call {module}.{func}",
                "parameters": [
                    {
                        "name": "deployment",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    *request["parameters"],
                ],
                **_multipart(execution_files(description)),
                "responses": {
                    "200": {
                        "description": "where the result will be",
                        "content": {response["media_type"]: {"schema": response["schema"]}},
                    }
                },
            }
        }
    return {
        "openapi": "3.0.3",
        "info": {"title": f"module {module}", "version": "1"},
        "paths": paths,
    }
