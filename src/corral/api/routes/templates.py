"""Template routes: register, list, read and remove session templates; start sessions.

`POST /templates/{name}/sessions` is the way in for sessions; the session routes read and end
them.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat

from corral.api.deps import CoreDep, Reader, Writer
from corral.api.errors import ErrorResponse
from corral.api.links import answer_links
from corral.model.names import NAME_PATTERN
from corral.model.views import SessionView, TemplateView

router = APIRouter(prefix="/templates", tags=["templates"])
TemplateName = Annotated[
    str, Path(pattern=NAME_PATTERN, max_length=63, description="Template name.")
]


ECHO = (
    "x-corral-template:\n  name: echo\n"
    'services:\n  echo:\n    image: local/busybox:1\n    command: [sleep, "60"]\n'
)


class TemplateFile(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"file": ECHO}]})

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
    ttl: StrictFloat | None = Field(
        default=None, ge=1, le=7 * 86400, description="Seconds it may live; None: the template's."
    )
    queue: StrictBool = Field(
        default=False, description="Wait in a queue when no host has room, instead of a 429."
    )


@router.post(
    "",
    summary="Register a template (or replace it)",
    responses=answer_links(
        (200, 201),
        "name",
        ("get", "/templates/{name}", "name"),
        ("delete", "/templates/{name}", "name"),
        ("post", "/templates/{name}/sessions", "name"),
    ),
)
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


SESSION_ANSWERS = answer_links(
    (201, 202), "id", ("get", "/sessions/{id}", "id"), ("delete", "/sessions/{id}", "id")
)
SESSION_ANSWERS[202] |= {
    "model": SessionView,
    "description": "Pending or starting (queued, or not waited for)",
}
SESSION_ANSWERS[429] = {"model": ErrorResponse, "description": "No host has room (no queue)."}


@router.post(
    "/{name}/sessions",
    status_code=201,
    summary="Start a session of a template",
    responses=SESSION_ANSWERS,
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
