"""Session routes: list, read, end (DELETE) and read the output of sessions.

Sessions start through `POST /templates/{name}/sessions`; their history stays readable
after the reaper has removed their containers.
"""

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from corral.api.deps import CoreDep, Reader, Writer
from corral.api.streams import text_stream
from corral.model.names import NAME_PATTERN
from corral.model.views import SessionState, SessionView

router = APIRouter(prefix="/sessions", tags=["sessions"])
SessionId = Annotated[str, Path(pattern=r"^[0-9A-Fa-f]{16}$", description="Session id.")]


@router.get("", summary="List sessions, newest first")
async def list_sessions(
    core: CoreDep,
    _: Reader,
    state: SessionState | None = None,
    template: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[SessionView]:
    return await core.sessions.views(state, template, limit)


@router.get("/{id}", summary="A session: state, containers, endpoints, history")
async def get_session(id: SessionId, core: CoreDep, _: Reader) -> SessionView:
    return await core.sessions.view(id.upper())


@router.delete("/{id}", summary="End a session now and remove its containers and network")
async def end(id: SessionId, core: CoreDep, _: Writer) -> SessionView:
    return await core.sessions.cancel(id.upper())


@router.get(
    "/{id}/services/{service}/logs",
    summary="A session container's output (kept after clean-up)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def logs(
    id: SessionId,
    service: Annotated[str, Path(pattern=NAME_PATTERN, max_length=63)],
    core: CoreDep,
    _: Reader,
    tail: Annotated[int, Query(ge=0, le=100_000)] = 200,
    follow: bool = False,
) -> StreamingResponse:
    return await text_stream(core.sessions.logs(id.upper(), service, tail, follow))
