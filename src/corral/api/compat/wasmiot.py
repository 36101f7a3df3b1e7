"""The app behind `wasmiot_port` (the seed's 3000): only the Wasm-IoT routes, and the
seed's answer to an unknown URL, `404 {"err": "Bad URL"}`.

Errors keep corral's `{"error": {...}}` body and add the seed's `err` text beside it.
"""

import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from corral.api import errors
from corral.api.compat import port_app
from corral.api.routes import wasmiot
from corral.core import Core


class SeedErrors(BaseHTTPMiddleware):
    """Copy `error.message` into a top-level `err`, as the seed's clients read it."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        if response.status_code < 400 or response.headers.get("content-type") != "application/json":
            return response
        body = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[attr-defined]
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            data["err"] = data["error"].get("message", "")
            body = json.dumps(data).encode()
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return Response(body, response.status_code, headers, media_type="application/json")


def create_wasmiot_app(core: Core) -> FastAPI:
    app = port_app(core, "corral: Wasm-IoT orchestrator API", wasmiot.router)

    @app.exception_handler(StarletteHTTPException)
    async def bad_url(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return JSONResponse({"err": "Bad URL"}, status_code=404)
        return errors.error_response(exc.status_code, "error", str(exc.detail))

    app.add_middleware(SeedErrors)
    return app
