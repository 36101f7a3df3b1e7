"""`corral serve`: run the API server with its background loops in one process.

Starts the Core first (so a bad database URL is a one-line error), then uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from corral.exits import CliError

if TYPE_CHECKING:  # the server's modules load only when it runs: the CLI starts fast
    from corral.config import Settings
    from corral.core import Core


def _settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    from corral.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise CliError(f"bad setting {field}: {first['msg']}", 2) from None


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
    elif core.admin_from_env:
        typer.echo("")
        typer.echo("First start: the admin token given in CORRAL_BOOTSTRAP_TOKEN was installed.")
        typer.echo("")


async def _serve(settings: Settings) -> None:
    import uvicorn

    from corral.api.app import create_server_app
    from corral.api.robot_ws import robot_websockets
    from corral.core import Core
    from corral.errors import CorralError
    from corral.model.yamlfile import FileInvalid
    from corral.serving import (
        GracefulServer,
        keep_heap_settled,
        listen,
        settle_heap,
        uvicorn_logging,
    )

    # The seed APIs' own ports, each with the line that says where it is.
    extra = [
        (settings.go1_port, "Go1 API ", f"/deploy/ (stack {settings.go1_stack})"),
        (settings.edgeecho_port, "edgeECHO", f"/post/ (template {settings.edgeecho_template})"),
        (settings.wasmiot_port, "Wasm-IoT", "/file/device"),
    ]
    ports = [(port, label, rest) for port, label, rest in extra if port is not None]
    sockets = [listen(settings.bind, port) for port in (settings.port, *(p[0] for p in ports))]
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
    for port, label, rest in ports:
        typer.echo(f"  {label}   http://{host}:{port}{rest}")
    config = uvicorn.Config(
        create_server_app(core),
        log_config=uvicorn_logging(),
        log_level="info" if settings.access_log else "warning",
        access_log=settings.access_log,
        timeout_graceful_shutdown=3,
        lifespan="on",
        ws=robot_websockets(core),  # /fleet/ws served lean; other sockets by uvicorn's own
    )
    server = GracefulServer(config)
    settle_heap()
    stopping = asyncio.Event()
    settling = asyncio.create_task(keep_heap_settled(stopping))
    try:
        await server.serve(sockets=sockets)
    finally:
        stopping.set()
        await settling
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
    from corral.serving import configure_logging

    configure_logging(settings.log_level)
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner,
    ):
        runner.run(_serve(settings))


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when asked for and installed; else the standard library's."""
    if name == "uvloop":
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.new_event_loop
    return None


def reset_admin(
    home: Annotated[Path | None, typer.Option(help="state directory [./.corral]")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL")] = None,
) -> None:
    """Revoke every admin token and print a new one (run where the database is)."""
    from corral.core import Core

    async def reset() -> str:
        core = Core(_settings(home=home, database_url=database_url))
        try:
            await core.db.migrate()
            return await core.access.reset_admin()
        finally:
            await core.stop()

    typer.echo(asyncio.run(reset()))
