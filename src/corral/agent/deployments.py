"""Deployments on one agent: the per-device part the orchestrator POSTs to /deploy,
checked strictly, kept in memory and persisted under the agent's home.

The server validates parts here and asks `DeploymentStore` to save, load and remove them.
"""

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from corral.agent.runtime import CompiledModule, ModuleInvalid, Runtime

SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")

log = structlog.get_logger("corral.agent.deployments")


class PartInvalid(Exception):
    """A deploy part the agent refuses; the message names the field."""


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _http_url(value: object) -> object:
    if isinstance(value, str) and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


HttpUrl = Annotated[str, BeforeValidator(_http_url)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Schema(_Strict):
    type: Literal["integer", "number", "string", "object"]
    format: str | None = None


class Parameter(_Strict):
    name: str
    in_: Literal["query"] = Field(default="query", alias="in")
    required: bool = True
    description: str | None = None
    schema_: Schema = Field(alias="schema")


class RequestBody(_Strict):
    media_type: str
    schema_: Schema | None = Field(default=None, alias="schema")
    encoding: dict[str, Any] | None = None


class EndpointRequest(_Strict):
    parameters: list[Parameter] = []
    request_body: RequestBody | None = None


class EndpointResponse(_Strict):
    media_type: str
    schema_: Schema | None = Field(default=None, alias="schema")


class Endpoint(_Strict):
    url: HttpUrl
    path: str
    method: Annotated[Literal["GET", "POST"], BeforeValidator(_upper)]
    request: EndpointRequest
    response: EndpointResponse

    def target(self) -> str:
        return self.url.rstrip("/") + "/" + self.path.lstrip("/")


class ModuleUrls(_Strict):
    binary: HttpUrl
    description: HttpUrl | None = None
    other: dict[str, HttpUrl] = {}


class ModulePart(_Strict):
    id: str
    name: str
    urls: ModuleUrls


class Instruction(_Strict):
    from_: Endpoint | None = Field(default=None, alias="from")
    to: Endpoint | None = None


class Instructions(_Strict):
    modules: dict[str, dict[str, Instruction]] = {}


class Mount(_Strict):
    path: str
    media_type: str | None = None
    stage: Literal["execution", "deployment", "output"] | None = None


class FunctionMounts(_Strict):
    execution: list[Mount]
    deployment: list[Mount]
    output: list[Mount]


class DeployPart(_Strict):
    """One device's part of a deployment, in the supervisor protocol's shape."""

    deployment_id: str = Field(alias="deploymentId")
    modules: list[ModulePart]
    endpoints: dict[str, dict[str, Endpoint]]
    instructions: Instructions = Instructions()
    mounts: dict[str, dict[str, FunctionMounts]] = {}

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_part(body: object) -> DeployPart:
    """The part, or PartInvalid naming the first bad field (e.g. `modules.0.urls.x`)."""
    try:
        part = DeployPart.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise PartInvalid(f"{where}: {first['msg']}") from None
    _check_names(part)
    return part


def _check_names(part: DeployPart) -> None:
    if not SAFE_NAME.match(part.deployment_id):
        raise PartInvalid("deploymentId: use letters, digits, '.', '_' or '-' (at most 128)")
    names: set[str] = set()
    for index, module in enumerate(part.modules):
        if not SAFE_NAME.match(module.name):
            raise PartInvalid(f"modules.{index}.name: use letters, digits, '.', '_' or '-'")
        if module.name in names:
            raise PartInvalid(f"modules.{index}.name: module {module.name!r} appears twice")
        names.add(module.name)
        for filename in module.urls.other:
            if not SAFE_NAME.match(filename):
                raise PartInvalid(f"modules.{index}.urls.other.{filename}: not a plain file name")
    for module_name, functions in part.endpoints.items():
        if module_name not in names:
            raise PartInvalid(f"endpoints.{module_name}: no module of that name in modules")
        for function, endpoint in functions.items():
            expected = f"/{part.deployment_id}/modules/{module_name}/{function}"
            if endpoint.path != expected:
                raise PartInvalid(f"endpoints.{module_name}.{function}.path: expected {expected!r}")
    tables: list[tuple[str, dict[str, dict[str, Any]]]] = [
        ("instructions.modules", dict(part.instructions.modules)),
        ("mounts", dict(part.mounts)),
    ]
    for section, table in tables:
        for module_name, functions in table.items():
            for function in functions:
                if function not in part.endpoints.get(module_name, {}):
                    raise PartInvalid(
                        f"{section}.{module_name}.{function}: no such endpoint in endpoints"
                    )
    for module_name, by_function in part.mounts.items():
        for function, mounts in by_function.items():
            for stage in ("execution", "deployment", "output"):
                for index, mount in enumerate(getattr(mounts, stage)):
                    if not SAFE_NAME.match(mount.path):
                        raise PartInvalid(
                            f"mounts.{module_name}.{function}.{stage}.{index}.path: "
                            f"{mount.path!r} is not a plain file name"
                        )


def check_modules(part: DeployPart, compiled: dict[str, CompiledModule], runtime: Runtime) -> None:
    """Every import offered here, every endpoint an exported function; else PartInvalid."""
    for index, module in enumerate(part.modules):
        missing = runtime.missing_imports(compiled[module.name])
        if missing:
            raise PartInvalid(
                f"modules.{index}: module {module.name} imports {', '.join(missing)}, "
                f"which this agent does not offer (it offers {', '.join(runtime.interfaces)})"
            )
    for module_name, functions in part.endpoints.items():
        exported = compiled[module_name].functions
        for function in functions:
            if function not in exported:
                raise PartInvalid(
                    f"endpoints.{module_name}.{function}: module {module_name} exports no "
                    f"function {function!r} (it exports {', '.join(sorted(exported)) or 'none'})"
                )


@dataclass
class Deployment:
    """A deployment ready to serve calls."""

    part: DeployPart
    modules: dict[str, CompiledModule]
    folder: Path

    @property
    def files(self) -> Path:
        """Where `urls.other` files are kept; preopened as `/` for functions with mounts."""
        return self.folder / "files"

    def mounts_for(self, module: str, function: str) -> Path | None:
        mounts = self.part.mounts.get(module, {}).get(function)
        if mounts is None or not (mounts.execution or mounts.deployment or mounts.output):
            return None
        return self.files


class DeploymentStore:
    """Deployments in memory, mirrored to `<home>/deployments/<id>/deployment.json` with
    the binaries in `<home>/modules/<sha256>.wasm`, so a restarted agent serves them."""

    def __init__(self, home: Path, runtime: Runtime) -> None:
        self.home = home
        self.runtime = runtime
        self.modules_dir = home / "modules"
        self.deployments_dir = home / "deployments"
        self.active: dict[str, Deployment] = {}

    def folder(self, deployment_id: str) -> Path:
        return self.deployments_dir / deployment_id

    def load(self) -> None:
        """Read every saved deployment; one that cannot be read is logged and skipped."""
        if not self.deployments_dir.is_dir():
            return
        for saved in sorted(self.deployments_dir.glob("*/deployment.json")):
            if saved.parent.name.startswith("."):
                continue  # an unfinished save
            try:
                record = json.loads(saved.read_text(encoding="utf-8"))
                part = parse_part(record["part"])
                compiled = {
                    name: self.runtime.compile((self.modules_dir / f"{sha}.wasm").read_bytes())
                    for name, sha in record["binaries"].items()
                }
                check_modules(part, compiled, self.runtime)
            except (OSError, ValueError, KeyError, TypeError, PartInvalid, ModuleInvalid) as exc:
                log.warning("saved deployment skipped", file=str(saved), error=str(exc))
                continue
            self.active[part.deployment_id] = Deployment(part, compiled, saved.parent)
        if self.active:
            log.info("deployments loaded", ids=sorted(self.active))

    def save(
        self,
        part: DeployPart,
        binaries: dict[str, bytes],
        compiled: dict[str, CompiledModule],
        files: dict[str, bytes],
    ) -> Deployment:
        """Persist a checked part (replacing one with the same id) and make it active."""
        self.modules_dir.mkdir(parents=True, exist_ok=True)
        for name, binary in binaries.items():
            _write(self.modules_dir / f"{compiled[name].sha256}.wasm", binary)
        folder = self.folder(part.deployment_id)
        staging = folder.with_name(f".{part.deployment_id}.new")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "files").mkdir(parents=True)
        for filename, data in files.items():
            (staging / "files" / filename).write_bytes(data)
        record = {
            "part": part.dump(),
            "binaries": {name: module.sha256 for name, module in compiled.items()},
        }
        (staging / "deployment.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        deployment = Deployment(part, dict(compiled), folder)
        self.active[part.deployment_id] = deployment
        self._prune()
        return deployment

    def remove(self, deployment_id: str) -> bool:
        if self.active.pop(deployment_id, None) is None:
            return False
        shutil.rmtree(self.folder(deployment_id), ignore_errors=True)
        self._prune()
        return True

    def _prune(self) -> None:
        """Delete saved binaries no deployment uses any more."""
        used = {m.sha256 for d in self.active.values() for m in d.modules.values()}
        for path in self.modules_dir.glob("*.wasm"):
            if path.stem not in used:
                path.unlink(missing_ok=True)


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_bytes(data)
    temporary.replace(path)
