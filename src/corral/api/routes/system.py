"""System routes: liveness, status, Prometheus metrics, and the offline API docs.

The docs pages load Swagger UI and ReDoc from files shipped in a Python package, so they
work on a site with no internet.
"""

from datetime import UTC, datetime
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Security
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field

import corral
from corral.api.deps import CoreDep, Reader, bearer

router = APIRouter(tags=["system"])
DOCS_ASSETS = resources.files("fastapi_offline") / "static"


class Health(BaseModel):
    status: str


class Status(BaseModel):
    version: str
    database: str
    hosts: int
    hosts_reachable: int


@router.get("/healthz", summary="Liveness (no token needed)")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/status", summary="Version, database and host counts")
async def status(core: CoreDep, _: Reader) -> Status:
    hosts = await core.hosts.views()
    return Status(
        version=corral.__version__,
        database=core.db.describe(),
        hosts=len(hosts),
        hosts_reachable=sum(1 for h in hosts if h.reachable),
    )


async def _metrics_reader(
    core: CoreDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> None:
    if not core.settings.metrics_public:
        await core.access.authorize(credentials.credentials if credentials else None, "read")


class ReplicaInfo(BaseModel):
    id: str
    url: str
    leader: bool
    term: int | None = Field(
        description="The leader's leadership term (it grows at each change of leader); "
        "null on the others."
    )
    this: bool = Field(description="The replica that answered.")
    started_at: datetime
    seen_at: datetime


@router.get("/replicas", summary="The corral processes sharing this database, and the leader")
async def replicas(core: CoreDep, _: Reader) -> list[ReplicaInfo]:
    if not core.replicas.shared:
        leads = core.replicas.leading.is_set()
        return [
            ReplicaInfo(
                id=core.replica_id,
                url=core.replicas.url,
                leader=leads,
                term=core.db.term.term if leads else None,
                this=True,
                started_at=core.started_at,
                seen_at=datetime.now(UTC),
            )
        ]
    rows, lead = await core.replicas.replicas()
    return [
        ReplicaInfo(
            id=r.id,
            url=r.url,
            leader=r.id == lead.holder,
            term=lead.term if r.id == lead.holder else None,
            this=r.id == core.replica_id,
            started_at=r.started_at,
            seen_at=r.seen_at,
        )
        for r in rows
    ]


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(_metrics_reader)],
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(core: CoreDep) -> Response:
    return Response(core.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/docs", include_in_schema=False)
async def swagger(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title="corral API",
        swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs-assets/favicon.png",
    )


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}/openapi.json",
        title="corral API",
        redoc_js_url=f"{root}/docs-assets/redoc.standalone.js",
        redoc_favicon_url=f"{root}/docs-assets/favicon.png",
        with_google_fonts=False,
    )
