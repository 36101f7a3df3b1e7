"""FastAPI dependencies: the process's Core and the authenticated caller.

Every route declares which action it needs (`read`, `write`, `admin`) through these.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from corral.control.access import Action, Caller
from corral.core import Core

bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer crl_...`")


async def get_core(request: Request) -> Core:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread
    # hand-off (two turns of the event loop) for every request
    core: Core = request.app.state.core
    return core


CoreDep = Annotated[Core, Depends(get_core)]


def require(action: Action) -> Callable[..., Awaitable[Caller]]:
    async def caller(
        core: CoreDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> Caller:
        secret = credentials.credentials if credentials is not None else None
        return await core.access.authorize(secret, action)

    return caller


Reader = Annotated[Caller, Depends(require("read"))]
Writer = Annotated[Caller, Depends(require("write"))]
Admin = Annotated[Caller, Depends(require("admin"))]
