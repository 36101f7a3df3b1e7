"""`corral agent`: run this machine as a Wasm device (the supervisor protocol, wasmtime).

Each option also reads `CORRAL_AGENT_<NAME>`; the app itself is `corral.agent.server`.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from corral.agent.interfaces import SENSORS
from corral.exits import CliError

if TYPE_CHECKING:  # wasmtime and the server load only when the agent runs
    from corral.agent.settings import AgentSettings


def _sensors(given: list[str]) -> dict[str, float]:
    sensors: dict[str, float] = {}
    for item in given:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CliError(f"--sensor {item!r}: write NAME=VALUE, e.g. temperature=21.5", 2)
        try:
            sensors[key] = float(value)
        except ValueError:
            raise CliError(f"--sensor {key}: {value!r} is not a number", 2) from None
    return sensors


async def _serve(settings: AgentSettings) -> None:
    import uvicorn

    from corral.agent.server import create_agent_app
    from corral.serving import GracefulServer, listen, uvicorn_logging

    sock = listen(settings.bind, settings.port)
    app = create_agent_app(settings)
    config = uvicorn.Config(
        app,
        log_config=uvicorn_logging(),
        log_level="warning",
        timeout_graceful_shutdown=3,
        lifespan="on",
    )
    server = GracefulServer(config)
    # the interfaces are known before the runtime starts; print the one start line
    from corral.agent.interfaces import catalog, supervisor_interfaces

    offered = supervisor_interfaces(catalog(0.0, settings.sensors))
    typer.echo(
        f"corral agent {settings.name} at {settings.base_url}  interfaces: {', '.join(offered)}",
    )
    await server.serve(sockets=[sock])
    if not server.started:
        raise CliError(f"corral agent {settings.name} could not start (see the log above)", 1)


def agent(
    name: Annotated[
        str | None,
        typer.Option(envvar="CORRAL_AGENT_NAME", help="device name [the host name]"),
    ] = None,
    bind: Annotated[
        str, typer.Option(envvar="CORRAL_AGENT_BIND", help="address to listen on")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CORRAL_AGENT_PORT", help="port")] = 5000,
    advertise_address: Annotated[
        str | None,
        typer.Option(
            envvar="CORRAL_AGENT_ADVERTISE_ADDRESS",
            help="address others reach this agent at (mDNS, resultUrl) [--bind]",
        ),
    ] = None,
    home: Annotated[
        Path | None,
        typer.Option(envvar="CORRAL_AGENT_HOME", help="state folder [~/.corral-agent/NAME]"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CORRAL_AGENT_TOKEN",
            help="device credential, sent as a bearer token to the orchestrator",
        ),
    ] = None,
    orchestrator: Annotated[
        str | None,
        typer.Option(
            envvar="CORRAL_AGENT_ORCHESTRATOR", help="orchestrator base URL (or POST /register)"
        ),
    ] = None,
    fuel: Annotated[
        int, typer.Option(envvar="CORRAL_AGENT_FUEL", help="wasm fuel units per call")
    ] = 1_000_000_000,
    memory_mb: Annotated[
        int, typer.Option(envvar="CORRAL_AGENT_MEMORY_MB", help="linear memory cap per call, MiB")
    ] = 64,
    call_timeout: Annotated[
        float, typer.Option(envvar="CORRAL_AGENT_CALL_TIMEOUT", help="seconds per call")
    ] = 10.0,
    sensor: Annotated[
        list[str] | None,
        typer.Option(
            envvar="CORRAL_AGENT_SENSOR",
            help=f"NAME=VALUE, repeatable; known: {', '.join(SENSORS)}",
        ),
    ] = None,
    no_mdns: Annotated[
        bool, typer.Option("--no-mdns", envvar="CORRAL_AGENT_NO_MDNS", help="do not advertise")
    ] = False,
) -> None:
    """Run this machine as a Wasm device: the supervisor API, wasmtime and an mDNS advert."""
    given = {
        "name": name,
        "bind": bind,
        "port": port,
        "advertise_address": advertise_address,
        "home": home.expanduser() if home is not None else None,
        "token": token,
        "orchestrator": orchestrator,
        "fuel": fuel,
        "memory_mb": memory_mb,
        "call_timeout": call_timeout,
        "sensors": _sensors(sensor or []),
        "mdns": not no_mdns,
    }
    from pydantic import ValidationError

    from corral.agent.settings import AgentSettings

    try:
        settings = AgentSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        key = field.split(".")[0]
        option = "--sensor" if key == "sensors" else "--" + key.replace("_", "-")
        message = str(first["msg"]).removeprefix("Value error, ")
        raise CliError(f"bad {option}: {message}", 2) from None
    from corral.serving import configure_logging

    configure_logging("info")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings))
