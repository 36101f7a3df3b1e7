"""The edgeECHO operator's API: `GET /`, `GET /test` and `POST /post/ {count, plain_stream}`
(also at `/post`, without the slash, answered directly rather than redirected).

Served on its own port (`edgeecho_port`, the seed's 5000) so that its `/` does not shadow
corral's; `/post/` starts a session of the `edgeecho_template` template and answers with
the seed's fields (container ids by role), once the session runs.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from corral.api.compat import port_app
from corral.api.deps import CoreDep, bearer
from corral.api.errors import ErrorResponse
from corral.core import Core
from corral.model.fields import Integer

router = APIRouter(tags=["edgeECHO (compatibility)"])
ROLES = ("probe", "stream", "segmentation")


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: Integer = Field(ge=1, description="Data messages the probe sends.")
    plain_stream: StrictBool = Field(description="True: no segmentation server.")


class StreamSession(BaseModel):
    session_id: str
    network: str
    probe: str = Field(description="Container id.")
    stream: str
    segmentation: str | None = Field(description="None for a plain stream.")
    message_count: int
    stream_type: str = Field(examples=["segmented", "plain"])


async def _allowed(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    core: Core = request.app.state.core
    if not core.settings.edgeecho_anonymous:
        await core.access.authorize(credentials.credentials if credentials else None, "write")


@router.get("/", response_class=PlainTextResponse, summary="The seed's greeting")
async def hello() -> str:
    return "Hello World"


@router.get("/test", response_class=PlainTextResponse, summary="The seed's liveness answer")
async def test() -> str:
    return "Working"


@router.post("/post", dependencies=[Depends(_allowed)], include_in_schema=False)
@router.post(
    "/post/",
    dependencies=[Depends(_allowed)],
    summary="Start a probe -> stream (-> segmentation) session",
    responses={
        200: {"model": StreamSession},
        502: {"model": ErrorResponse, "description": "The session failed"},
        504: {"model": ErrorResponse, "description": "The session is still starting"},
    },
)
async def post(body: StreamRequest, core: CoreDep) -> Any:
    params = {"count": body.count, "plain_stream": body.plain_stream}
    view = await core.sessions.create(core.settings.edgeecho_template, params)
    ids = {c.service: c.container_id for c in view.containers}
    if view.state in ("pending", "starting"):
        return JSONResponse(
            {
                "error": {
                    "code": "still_starting",
                    "message": f"session {view.id} is still {view.state}; follow it at "
                    f"GET /sessions/{view.id} on corral's API",
                    "detail": {"session_id": view.id},
                }
            },
            504,
        )
    if view.state != "running" and view.state != "completed":
        return JSONResponse(
            {
                "error": {
                    "code": "session_failed",
                    "message": f"session {view.id} {view.state}: {view.reason}",
                    "detail": {"session_id": view.id},
                }
            },
            502,
        )
    return StreamSession(
        session_id=view.id,
        network=view.network,
        probe=ids.get("probe", ""),
        stream=ids.get("stream", ""),
        segmentation=None if body.plain_stream else ids.get("segmentation"),
        message_count=body.count,
        stream_type="plain" if body.plain_stream else "segmented",
    )


def create_edgeecho_app(core: Core) -> FastAPI:
    """The app behind `edgeecho_port`: only the seed's three routes."""
    return port_app(core, "corral: edgeECHO operator API", router)
