"""`create_app(settings)`: the FastAPI application with every router, middleware and handler.

`corral serve` runs it under uvicorn; tests run it in-process or as a real server.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

import corral
from corral.api import errors
from corral.api.compat import go1
from corral.api.middleware import BodyLimit, RequestMetrics
from corral.api.routes import events, hosts, stacks, system, tokens
from corral.config import Settings
from corral.core import Core

DASHBOARD = resources.files("corral.web") / "static"
DESCRIPTION = """One control plane for robot and edge fleets.

Every request but `/healthz` needs `Authorization: Bearer <token>`. Errors are
`{"error": {"code", "message", "detail"}}`.
"""


def create_app(settings: Settings | None = None, core: Core | None = None) -> FastAPI:
    """Build the app. Given only settings, it starts and stops its own Core in the
    lifespan; given a Core, the caller owns it (as `corral serve` does)."""
    owned = core is None
    core = core or Core(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await core.start()
        try:
            yield
        finally:
            if owned:
                await core.stop()

    app = FastAPI(
        title="corral",
        version=corral.__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        responses={
            400: {"model": errors.ErrorResponse},
            401: {"model": errors.ErrorResponse},
            403: {"model": errors.ErrorResponse},
            404: {"model": errors.ErrorResponse},
            409: {"model": errors.ErrorResponse},
            413: {"model": errors.ErrorResponse},
            422: {"model": errors.ErrorResponse},
        },
    )
    app.state.core = core
    errors.install(app)
    routers = (system.router, tokens.router, hosts.router, stacks.router, events.router, go1.router)
    for router in routers:
        app.include_router(router)
    app.mount("/ui", StaticFiles(directory=str(DASHBOARD), html=True), name="dashboard")
    app.mount("/docs-assets", StaticFiles(directory=str(system.DOCS_ASSETS)), name="docs-assets")
    app.add_middleware(BodyLimit, limit=core.settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=core.metrics)
    return app
