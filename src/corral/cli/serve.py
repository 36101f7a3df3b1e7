"""`corral serve`: run the API server with its background loops in one process.

Starts the Core first (so a bad database URL is a one-line error), then uvicorn.
"""

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
import uvicorn

from corral.api.app import create_server_app
from corral.cli.client import CliError
from corral.config import Settings
from corral.core import Core
from corral.errors import CorralError
from corral.model.yamlfile import FileInvalid


def _settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise CliError(f"bad setting {field}: {first['msg']}", 2) from None


def _listen(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {bind}:{port}: {exc.strerror}", 1) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _configure_logging(level: str) -> None:
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise CliError(f"bad log level {level!r}", 2)
    logging.basicConfig(level=number, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(number))


def _banner(core: Core, base: str) -> None:
    typer.echo(f"corral {core.settings.bind}:{core.settings.port}  database {core.db.describe()}")
    typer.echo(f"  API        {base}/")
    typer.echo(f"  API docs   {base}/docs  (OpenAPI: {base}/openapi.json)")
    typer.echo(f"  dashboard  {base}/ui/")
    typer.echo(f"  metrics    {base}/metrics")
    if core.first_admin_token:
        typer.echo("")
        typer.echo("First start: an admin token was created. It is shown only this once:")
        typer.echo(f"  {core.first_admin_token}")
        typer.echo(f"  export CORRAL_URL={base} CORRAL_TOKEN={core.first_admin_token}")
        typer.echo("")


class _Server(uvicorn.Server):
    """uvicorn, but SIGTERM/SIGINT end `serve()` normally (exit 0 after a clean stop)
    instead of re-raising the signal and skipping corral's own shutdown."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


async def _serve(settings: Settings) -> None:
    sockets = [_listen(settings.bind, settings.port)]
    if settings.go1_port is not None:
        sockets.append(_listen(settings.bind, settings.go1_port))
    if settings.edgeecho_port is not None:
        sockets.append(_listen(settings.bind, settings.edgeecho_port))
    core = Core(settings)
    try:
        await core.start()
    except (CorralError, FileInvalid, OSError) as exc:
        await core.stop()
        raise CliError(f"corral could not start: {exc}", 1) from None
    except Exception as exc:
        await core.stop()
        raise CliError(f"corral could not start: {type(exc).__name__}: {exc}", 1) from None
    host = f"[{settings.bind}]" if ":" in settings.bind else settings.bind
    _banner(core, f"http://{host}:{settings.port}")
    if settings.go1_port is not None:
        typer.echo(
            f"  Go1 API    http://{host}:{settings.go1_port}/deploy/ (stack {settings.go1_stack})"
        )
    if settings.edgeecho_port is not None:
        typer.echo(
            f"  edgeECHO   http://{host}:{settings.edgeecho_port}/post/ "
            f"(template {settings.edgeecho_template})"
        )
    config = uvicorn.Config(
        create_server_app(core),
        log_level="warning",
        timeout_graceful_shutdown=3,
        lifespan="on",
    )
    server = _Server(config)
    try:
        await server.serve(sockets=sockets)
    finally:
        await core.stop()


def serve(
    bind: Annotated[str | None, typer.Option(help="address to listen on [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port [8750]")] = None,
    home: Annotated[Path | None, typer.Option(help="state directory [./.corral]")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL")] = None,
    hosts_file: Annotated[Path | None, typer.Option(help="YAML hosts file to apply")] = None,
) -> None:
    """Run the corral server (API, docs, dashboard, host monitor)."""
    settings = _settings(
        bind=bind, port=port, home=home, database_url=database_url, hosts_file=hosts_file
    )
    _configure_logging(settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings))


def reset_admin(
    home: Annotated[Path | None, typer.Option(help="state directory [./.corral]")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL")] = None,
) -> None:
    """Revoke every admin token and print a new one (run where the database is)."""

    async def reset() -> str:
        core = Core(_settings(home=home, database_url=database_url))
        try:
            await core.db.migrate()
            return await core.access.reset_admin()
        finally:
            await core.stop()

    typer.echo(asyncio.run(reset()))
