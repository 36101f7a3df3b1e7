"""The seed systems' APIs, as thin routers over corral's core.

Each keeps its users' clients working unchanged; none holds logic of its own.
`port_app` builds the small app that serves one of them on a port of its own.
"""

from fastapi import APIRouter, FastAPI

import corral
from corral.api import errors
from corral.api.middleware import BodyLimit, RequestMetrics
from corral.core import Core


def port_app(core: Core, title: str, router: APIRouter) -> FastAPI:
    """An app with only `router`, corral's error shape, body limit and metrics. Its API
    description (`app.openapi()`, not served: the seed's clients never asked for one) is
    what tests check it against."""
    app = FastAPI(
        title=title,
        version=corral.__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        responses=errors.ERRORS,
    )
    app.state.core = core
    errors.install(app, core.db.connection_lost)
    errors.document_json_errors(app)
    app.include_router(router)
    app.add_middleware(BodyLimit, limit=core.settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=core.metrics)
    return app
