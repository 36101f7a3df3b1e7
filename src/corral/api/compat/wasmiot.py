"""The app behind `wasmiot_port` (the seed's 3000): only the Wasm-IoT routes, with the
orchestrator's answers: an unknown URL is `404 {"err": "Bad URL"}`; other errors are
`{"errorText", "error"}` (both the message), with 400 for bad input and 500 for a failure
on corral's or a device's side; CORS is open, as the orchestrator's web GUI calls it from
another origin.
"""

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from corral.api import errors
from corral.api.compat import port_app, wasmiot_routes
from corral.core import Core

# Bad input is 400 there; 401, 403 and 404 keep their meaning; a failure is 500.
BAD_INPUT = {400, 405, 409, 413, 415, 422}


def seed_status(status: int) -> int:
    if status in BAD_INPUT:
        return 400
    return 500 if status >= 500 else status


class SeedErrors(BaseHTTPMiddleware):
    """corral's `{"error": {code, message, detail}}` becomes the orchestrator's
    `{"errorText": message, "error": message}` (with `err` too, for older clients)."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        if response.status_code < 400 or response.headers.get("content-type") != "application/json":
            return response
        body = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[attr-defined]
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        status = response.status_code
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            message = str(data["error"].get("message", ""))
            rest = {k: v for k, v in data.items() if k != "error"}
            data = {**rest, "errorText": message, "error": message, "err": message}
            status = seed_status(status)
            body = json.dumps(data).encode()
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-length", "content-type")
        }
        return Response(body, status, headers, media_type="application/json")


SEED_ERROR = {
    "type": "object",
    "description": "`err` alone for an unknown URL",
    "properties": {
        "errorText": {"type": "string"},
        "error": {"type": "string"},
        "err": {"type": "string"},
    },
    "required": ["err"],
}
SEED_STATUSES = {
    "400": "Bad input",
    "401": "No or a bad token",
    "403": "Not allowed",
    "404": "Not found",
    "500": "A failure on corral's or a device's side",
}


def document_seed_errors(app: FastAPI) -> None:
    """The port's API description gives the orchestrator's error answers, as SeedErrors
    makes them, in place of corral's."""

    def seed_errors(operation: dict[str, Any]) -> None:
        responses = operation.get("responses", {})
        for status in [s for s in responses if s[0] in "45"]:
            del responses[status]
        for status, description in SEED_STATUSES.items():
            content = {"application/json": {"schema": SEED_ERROR}}
            responses[status] = {"description": description, "content": content}

    errors.edit_operations(app, seed_errors)


def create_wasmiot_app(core: Core) -> FastAPI:
    app = port_app(core, "corral: Wasm-IoT orchestrator API", wasmiot_routes.router)
    document_seed_errors(app)

    @app.exception_handler(StarletteHTTPException)
    async def bad_url(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return JSONResponse({"err": "Bad URL"}, status_code=404)
        return errors.error_response(exc.status_code, "error", str(exc.detail))

    app.add_middleware(SeedErrors)
    app.add_middleware(
        CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"]
    )
    return app
