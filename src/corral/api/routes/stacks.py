"""Stack routes: apply a compose file, read state, start/stop/restart services, logs, down.

Each route records intent through the stack service; `wait=true` (the default) waits for
one convergence pass before answering, so the answer shows where every replica ended up.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from corral.api.deps import CoreDep, Reader, Writer
from corral.api.streams import text_stream
from corral.model.names import NAME_PATTERN
from corral.model.views import StackView

router = APIRouter(prefix="/stacks", tags=["stacks"])
StackName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63, description="Stack name.")]
ServiceName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63)]
Wait = Annotated[bool, Query(description="Wait for one convergence pass.")]


class StackFile(BaseModel):
    """A compose file and what it interpolates."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=63, examples=["go1"])
    file: str = Field(min_length=1, max_length=512_000, description="The compose YAML text.")
    env: dict[str, str] = Field(default_factory=dict, max_length=1000)
    base_dir: str = Field(
        default="",
        max_length=4096,
        description="Folder (on the corral server) that relative build and bind paths and "
        "`.env` resolve against.",
    )
    mode: Literal["", "containers", "swarm"] = Field(
        default="",
        description="containers or swarm: wins over the file's `x-corral: {mode}` and is "
        "kept with the stack; empty: the file decides.",
    )


class Validation(BaseModel):
    valid: bool
    services: list[str]
    waves: list[list[str]]
    problems: list[str]


class Services(BaseModel):
    model_config = ConfigDict(extra="forbid")

    services: list[Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]] = Field(
        default_factory=list, max_length=200, description="None: every service."
    )


class DownResult(BaseModel):
    removed_containers: int
    pending_hosts: dict[str, str] = Field(
        default_factory=dict,
        description="Hosts that did not answer (and why): what the stack has there is "
        "removed when they answer again (event stack.leftovers_removed).",
    )


@router.post("/validate", summary="Check a stack file without deploying it")
async def validate(body: StackFile, core: CoreDep, _: Reader) -> Validation:
    spec = core.stacks.parse(body.name, body.file, body.env, body.base_dir, body.mode)
    problems = await core.stacks.check(body.name, spec)
    return Validation(
        valid=not problems, services=sorted(spec.services), waves=spec.waves(), problems=problems
    )


@router.post("", summary="Apply a stack (create or update)")
async def apply(
    body: StackFile, core: CoreDep, _: Writer, response: Response, wait: Wait = True
) -> StackView:
    outcome = await core.stacks.apply(body.name, body.file, body.env, body.base_dir, body.mode)
    response.status_code = 201 if outcome == "created" else 200
    if wait:
        return await core.stacks.converge(body.name)
    core.stacks.poke(body.name)
    return await core.stacks.view(body.name)


@router.get("", summary="List stacks")
async def list_stacks(core: CoreDep, _: Reader) -> list[StackView]:
    return await core.stacks.shown_all()


@router.get("/{name}", summary="A stack's services and containers")
async def get_stack(name: StackName, core: CoreDep, _: Reader) -> StackView:
    return await core.stacks.shown(name)


@router.delete("/{name}", summary="Remove a stack and everything corral made for it")
async def down(name: StackName, core: CoreDep, _: Writer) -> DownResult:
    removed, pending = await core.stacks.down(name)
    return DownResult(removed_containers=removed, pending_hosts=pending)


async def _after(core: CoreDep, name: str, wait: bool) -> StackView:
    if wait:
        return await core.stacks.converge(name)
    core.stacks.poke(name)
    return await core.stacks.view(name)


@router.post("/{name}/stop", summary="Stop services (they stay stopped)")
async def stop(
    name: StackName, body: Services, core: CoreDep, _: Writer, wait: Wait = True
) -> StackView:
    await core.stacks.set_stopped(name, body.services, True)
    return await _after(core, name, wait)


@router.post("/{name}/start", summary="Start services stopped through corral")
async def start(
    name: StackName, body: Services, core: CoreDep, _: Writer, wait: Wait = True
) -> StackView:
    await core.stacks.set_stopped(name, body.services, False)
    return await _after(core, name, wait)


@router.post("/{name}/restart", summary="Restart services")
async def restart(
    name: StackName, body: Services, core: CoreDep, _: Writer, wait: Wait = True
) -> StackView:
    await core.stacks.restart(name, body.services)
    return await _after(core, name, wait)


@router.get(
    "/{name}/services/{service}/logs",
    summary="A service's container output",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def logs(
    name: StackName,
    service: ServiceName,
    core: CoreDep,
    _: Reader,
    tail: Annotated[int, Query(ge=0, le=100_000)] = 200,
    follow: bool = False,
) -> StreamingResponse:
    return await text_stream(core.stacks.logs(name, service, tail, follow))
