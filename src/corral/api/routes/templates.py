"""Template routes: register, list, read and remove session templates; start sessions.

`POST /templates/{name}/sessions` is the way in for sessions; the session routes read and end
them.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from corral.api.deps import CoreDep, Reader, Writer
from corral.model.names import NAME_PATTERN
from corral.model.views import SessionView, TemplateView

router = APIRouter(prefix="/templates", tags=["templates"])
TemplateName = Annotated[
    str, Path(pattern=NAME_PATTERN, max_length=63, description="Template name.")
]


class TemplateFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        max_length=63,
        description="None: the name the file gives in x-corral-template.name.",
    )
    file: str = Field(min_length=1, max_length=512_000, description="The template YAML text.")
    base_dir: str = Field(
        default="",
        max_length=4096,
        description="Folder (on the corral server) that build contexts and binds resolve against.",
    )


class Added(BaseModel):
    name: str
    outcome: str = Field(description="created, updated or unchanged")
    template: TemplateView


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(default_factory=dict, max_length=200)
    ttl: float | None = Field(
        default=None, gt=0, le=7 * 86400, description="Seconds it may live; None: the template's."
    )
    queue: bool = Field(
        default=False, description="Wait in a queue when no host has room, instead of a 429."
    )


@router.post("", summary="Register a template (or replace it)")
async def add(body: TemplateFile, core: CoreDep, _: Writer, response: Response) -> Added:
    name, outcome = await core.sessions.add_template(body.file, body.name, body.base_dir)
    response.status_code = 201 if outcome == "created" else 200
    return Added(name=name, outcome=outcome, template=await core.sessions.template(name))


@router.get("", summary="List templates")
async def list_templates(core: CoreDep, _: Reader) -> list[TemplateView]:
    return await core.sessions.template_views()


@router.get("/{name}", summary="A template's parameters, services and reservation")
async def get_template(name: TemplateName, core: CoreDep, _: Reader) -> TemplateView:
    return await core.sessions.template(name)


@router.delete("/{name}", status_code=204, summary="Remove a template (sessions keep a copy)")
async def remove(name: TemplateName, core: CoreDep, _: Writer) -> Response:
    await core.sessions.remove_template(name)
    return Response(status_code=204)


@router.post(
    "/{name}/sessions",
    status_code=201,
    summary="Start a session of a template",
    responses={429: {"description": "No host has room (and queue was false)."}},
)
async def new_session(
    name: TemplateName,
    body: SessionRequest,
    core: CoreDep,
    _: Writer,
    response: Response,
    wait: Annotated[bool, Query(description="Answer once it runs (or failed).")] = True,
) -> SessionView:
    view = await core.sessions.create(name, body.params, body.ttl, body.queue, wait)
    if view.state in ("pending", "starting"):
        response.status_code = 202
    return view
