"""One error shape for every failure: `{"error": {"code", "message", "detail"}}`.

Installed by create_app; turns corral errors, HTTP errors and validation errors into it,
and any unexpected exception into a 500 without a traceback.
"""

import re
from collections.abc import Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.errors import CorralError

log = structlog.get_logger("corral.api")

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    code: str
    message: str
    detail: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# The error answers every route may give, for an app's API description.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 413, 422)
}


def error_response(
    status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "detail": detail}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        where, rest = parts[0], parts[1:]
        return f"{where}: {'.'.join(rest)}" if rest else where
    return ".".join(parts)


def validation_detail(exc: RequestValidationError) -> list[dict[str, str]]:
    return [
        {
            "field": _field(tuple(err.get("loc", ()))),
            "message": str(err.get("msg", "")).removeprefix("Value error, "),
        }
        for err in exc.errors()
    ]


def _allowed(request: Request) -> list[str]:
    """Every method the API description gives this path (Starlette names only the first
    matching route's)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {m.upper() for m in operations if m in HTTP_METHODS}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def edit_operations(app: FastAPI, edit: Callable[[dict[str, Any]], None]) -> None:
    """Have `app`'s API description built as FastAPI builds it, then `edit` each of its
    operations once (the edited description is the one kept and served)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                edit(operation)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_json_errors(app: FastAPI) -> None:
    """Error answers are JSON on every route; FastAPI documents a route's error models in
    that route's own media type (text/plain for a plain-text route): say application/json."""

    def as_json(operation: dict[str, Any]) -> None:
        for response in operation.get("responses", {}).values():
            content = response.get("content", {})
            errors = [
                media
                for media, body in content.items()
                if media != "application/json"
                and body.get("schema", {}).get("$ref", "").endswith("/ErrorResponse")
            ]
            for media in errors:
                content["application/json"] = content.pop(media)

    edit_operations(app, as_json)


def install(app: FastAPI, lost: Callable[[Exception], bool]) -> None:
    """corral's error shape on `app`; `lost(exc)` tells the database going away (a 503)
    from a bug (a 500): the store's `Database.connection_lost`."""

    @app.exception_handler(CorralError)
    async def corral_error(_: Request, exc: CorralError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, exc.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = validation_detail(exc)
        first = detail[0] if detail else {"field": "request", "message": "invalid"}
        message = f"{first['field']}: {first['message']}"
        if len(detail) > 1:
            message += f" (and {len(detail) - 1} more)"
        return error_response(422, "invalid", message, detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
            headers = {**(headers or {}), "Allow": ", ".join(_allowed(request))}
        return error_response(exc.status_code, code, message, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, ConnectionError) or lost(exc):
            # the database went away (a restart, a failover): the next request reconnects
            log.warning("database connection lost", path=request.url.path, error=str(exc))
            return error_response(
                503,
                "unavailable",
                "the database connection was lost; retry",
                headers={"Retry-After": "1"},
            )
        log.exception("unhandled error", path=request.url.path, method=request.method)
        return error_response(500, "internal", "internal error; the server log has the details")
