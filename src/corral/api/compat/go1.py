"""The Go1 orchestrator's API: `POST /deploy/`, `/terminate/`, `/start/`, `/stop/`.

Bound to one stack (the seed's "predefined containers") read from `go1_file`; answers keep
the seed's `{"success": true}` / `{"error": ...}` shapes, add per-container results, and are
non-2xx when anything failed. `/terminate/` removes only that stack's containers.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field

from corral.api.deps import CoreDep, bearer
from corral.api.errors import ErrorBody
from corral.core import Core
from corral.errors import Invalid, NotFound
from corral.model.views import StackView

router = APIRouter(tags=["go1 (compatibility)"])


class ContainerNames(BaseModel):
    model_config = ConfigDict(extra="forbid")

    containerName: list[str] = Field(max_length=200)


class Go1Container(BaseModel):
    name: str = Field(description="The service.")
    container: str
    host: str | None
    state: str
    error: str | None = None


class Go1Done(BaseModel):
    success: bool
    containers: list[Go1Container] | None = None
    removed: int | None = None


class Go1Failed(BaseModel):
    """The seed's `{"error": "..."}`, or corral's error object, with what was done."""

    error: str | ErrorBody
    containers: list[Go1Container] | None = None
    removed: int | None = None
    pending_hosts: dict[str, str] | None = None


ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"model": Go1Done},
    409: {"model": Go1Failed, "description": "Nothing deployed yet, or a conflict"},
    502: {"model": Go1Failed, "description": "Some container is not as asked"},
}


async def _allowed(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    core: Core = request.app.state.core
    if not core.settings.go1_anonymous:
        await core.access.authorize(credentials.credentials if credentials else None, "write")


Allowed = Depends(_allowed)


def _stack(core: Core) -> str:
    if core.settings.go1_file is None:
        raise NotFound("the Go1 API is not configured: set go1_file (and go1_stack)")
    return core.settings.go1_stack


def _results(view: StackView) -> list[dict[str, Any]]:
    return [
        {
            "name": s.service,
            "container": s.container,
            "host": s.host,
            "state": s.state,
            **({"error": s.reason} if s.reason else {}),
        }
        for s in view.slots
    ]


def _answer(view: StackView, wanted: set[str], done: str) -> JSONResponse:
    results = [r for r in _results(view) if not wanted or r["name"] in wanted]
    failed = [r for r in results if r["state"] != done]
    if failed:
        names = ", ".join(sorted({r["name"] for r in failed}))
        return JSONResponse({"error": f"not {done}: {names}", "containers": results}, 502)
    return JSONResponse({"success": True, "containers": results})


def _services(core_view: StackView, names: list[str]) -> list[str]:
    """The seed names containers by service; full container names are accepted too."""
    by_container = {s.container: s.service for s in core_view.slots}
    chosen, unknown = [], []
    for name in names:
        if name in core_view.services:
            chosen.append(name)
        elif name in by_container:
            chosen.append(by_container[name])
        else:
            unknown.append(name)
    if unknown:
        raise NotFound(f"unknown container(s): {', '.join(unknown)}", {"containerName": unknown})
    return sorted(set(chosen))


@router.post(
    "/deploy/",
    dependencies=[Allowed],
    summary="Deploy the predefined containers",
    responses=ANSWERS,
)
async def deploy(core: CoreDep) -> JSONResponse:
    name = _stack(core)
    path = core.settings.go1_file
    assert path is not None
    try:
        text = path.read_text()
    except OSError as exc:
        raise Invalid(f"cannot read go1_file {path}: {exc.strerror}") from None
    await core.stacks.apply(name, text, {}, str(path.resolve().parent))
    view = await core.stacks.view(name)
    if view.stopped_services:
        await core.stacks.set_stopped(name, view.stopped_services, False)
    return _answer(await core.stacks.converge(name), set(), "running")


@router.post(
    "/terminate/",
    dependencies=[Allowed],
    summary="Remove the stack's containers",
    responses=ANSWERS,
)
async def terminate(core: CoreDep) -> JSONResponse:
    name = _stack(core)
    try:
        removed, pending = await core.stacks.down(name)
    except NotFound:
        removed, pending = 0, {}
    if pending:
        hosts = ", ".join(f"{h} ({why})" for h, why in sorted(pending.items()))
        return JSONResponse(
            {
                "error": f"not reached: {hosts}; removed when they answer again",
                "removed": removed,
                "pending_hosts": pending,
            },
            502,
        )
    return JSONResponse({"success": True, "removed": removed})


async def _switch(core: Core, body: ContainerNames, stopped: bool) -> JSONResponse:
    name = _stack(core)
    try:
        view = await core.stacks.view(name)
    except NotFound:
        return JSONResponse({"error": "nothing deployed: POST /deploy/ first"}, 409)
    services = _services(view, body.containerName)
    if not services:
        raise Invalid("containerName lists no container", {"field": "containerName"})
    await core.stacks.set_stopped(name, services, stopped)
    done = "stopped" if stopped else "running"
    return _answer(await core.stacks.converge(name), set(services), done)


@router.post(
    "/start/", dependencies=[Allowed], summary="Start containers by name", responses=ANSWERS
)
async def start(body: ContainerNames, core: CoreDep) -> JSONResponse:
    return await _switch(core, body, stopped=False)


@router.post("/stop/", dependencies=[Allowed], summary="Stop containers by name", responses=ANSWERS)
async def stop(body: ContainerNames, core: CoreDep) -> JSONResponse:
    return await _switch(core, body, stopped=True)
