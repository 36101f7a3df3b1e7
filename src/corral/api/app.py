"""`create_app(settings)`: the FastAPI application with every router, middleware and handler.

`corral serve` runs it under uvicorn; tests run it in-process or as a real server.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import structlog
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

import corral
from corral import logs
from corral.api import errors
from corral.api.compat import go1, wasmiot_routes
from corral.api.compat.edgeecho import create_edgeecho_app
from corral.api.compat.wasmiot import create_wasmiot_app
from corral.api.forward import LeaderForward
from corral.api.middleware import BodyLimit, RequestMetrics
from corral.api.routes import (
    brokers,
    events,
    farm,
    fleet,
    hosts,
    sessions,
    stacks,
    system,
    tasks,
    templates,
    tokens,
    vda5050,
)
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
    if not structlog.is_configured():  # in-process use: no rich tracebacks with locals
        logs.configure()
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
        responses=errors.ERRORS,
    )
    app.state.core = core
    errors.install(app, core.db.connection_lost)
    errors.document_json_errors(app)
    routers = (
        system.router,
        tokens.router,
        hosts.router,
        stacks.router,
        templates.router,
        sessions.router,
        tasks.router,
        farm.router,
        fleet.router,
        vda5050.router,
        brokers.router,
        events.router,
        wasmiot_routes.router,
        go1.router,
    )
    for router in routers:
        app.include_router(router)
    app.mount("/ui", StaticFiles(directory=str(DASHBOARD), html=True), name="dashboard")
    app.mount("/docs-assets", StaticFiles(directory=str(system.DOCS_ASSETS)), name="docs-assets")
    app.add_middleware(LeaderForward, core=core)
    app.add_middleware(BodyLimit, limit=core.settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=core.metrics)
    return app


class PortRouter:
    """One server, two APIs: requests to `port` go to `other`, the rest (and the
    lifespan) to `main`."""

    def __init__(self, main: ASGIApp, port: int, other: ASGIApp) -> None:
        self.main, self.port, self.other = main, port, other

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server") if scope["type"] != "lifespan" else None
        if server and server[1] == self.port:
            await self.other(scope, receive, send)
        else:
            await self.main(scope, receive, send)


def create_server_app(core: Core) -> ASGIApp:
    """What `corral serve` runs: the API, plus the edgeECHO and Wasm-IoT APIs on their own
    ports if set."""
    app: ASGIApp = create_app(core=core)
    if core.settings.edgeecho_port is not None:
        app = PortRouter(app, core.settings.edgeecho_port, create_edgeecho_app(core))
    if core.settings.wasmiot_port is not None:
        app = PortRouter(app, core.settings.wasmiot_port, create_wasmiot_app(core))
    return app
