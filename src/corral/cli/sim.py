"""`corral sim robots` and `corral sim vda`: virtual robots for the fleet, over WebSocket
(a front end to `corral.robot.sim.run_fleet`) or as VDA 5050 vehicles on an MQTT broker
(`corral.robot.vda_sim`), for demos, load tests and trying the fleet without hardware.
"""

import asyncio
import signal
import time
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.markup import escape

from corral.cli.client import Api
from corral.cli.context import CliState
from corral.cli.output import emit_json, table
from corral.exits import CliError
from corral.robot.errors import RobotError
from corral.robot.sim import FleetSim, load_map, run_fleet

app = typer.Typer(help="Simulators: virtual robots for the fleet.", no_args_is_help=True)


def _line(text: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    typer.echo(f"{stamp}  {text}")


async def _simulate(
    api: Api, fmap: dict[str, Any], n: int, options: dict[str, Any], duration: float | None
) -> FleetSim:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with suppress(NotImplementedError, RuntimeError):  # no signal handlers off Unix
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        sim = await run_fleet(api.url, api.token, fmap, n, **options)
    except (RobotError, OSError, ValueError) as exc:
        raise CliError(f"cannot start the robots: {exc}") from None
    connected = sim.connected()
    if connected < n:
        _line(f"{connected} of {n} robots connected; the others keep trying")
    with suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    await sim.stop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signum)
    return sim


@app.command("robots")
def robots(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", min=1, help="how many robots")],
    map_file: Annotated[
        Path, typer.Option("--map", exists=True, dir_okay=False, help="map file (YAML/JSON)")
    ],
    url: Annotated[str | None, typer.Option(help="corral's URL [$CORRAL_URL]")] = None,
    token: Annotated[
        str | None, typer.Option(help="admin token, to register the robots [$CORRAL_TOKEN]")
    ] = None,
    prefix: Annotated[str, typer.Option(help="robot names are PREFIX-1 … PREFIX-N")] = "sim",
    speed: Annotated[float, typer.Option(min=0.001, help="metres per second")] = 1.0,
    rate: Annotated[float, typer.Option(min=0.01, help="telemetry per second when moving")] = 10.0,
    jitter: Annotated[float, typer.Option(min=0, max=0.99, help="speed varies by ± this")] = 0.1,
    disconnect_every: Annotated[
        float | None, typer.Option(help="each robot cuts its link about every N seconds")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="stop after N seconds (default: Ctrl-C)")
    ] = None,
    start_markers: Annotated[
        str | None, typer.Option(help="start markers a,b,c (default: spread over the map)")
    ] = None,
    signed: Annotated[bool, typer.Option(help="register the robots as signed (HMAC)")] = False,
    seed: Annotated[int | None, typer.Option(help="random seed, for repeatable runs")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only the summary")] = False,
) -> None:
    """Run N virtual robots: they register, connect, obey move/stop/estop/resume, report."""
    root = ctx.find_root().obj
    cli = root if isinstance(root, CliState) else CliState(None, None, False)
    api = Api.from_options(url or cli.url, token or cli.token)
    try:
        fmap = load_map(map_file)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the map {map_file}: {exc}", 2) from None
    options: dict[str, Any] = {
        "prefix": prefix,
        "speed": speed,
        "rate": rate,
        "jitter": jitter,
        "disconnect_every": disconnect_every,
        "start_markers": [m.strip() for m in start_markers.split(",")] if start_markers else None,
        "log": None if quiet else _line,
        "signed": signed,
        "seed": seed,
    }
    sim = asyncio.run(_simulate(api, fmap, n, options, duration))
    stats = sim.stats
    if cli.json:
        emit_json(
            {
                name: {
                    "start": s.start,
                    "marker": s.marker,
                    "lane": list(s.lane) if s.lane else None,
                    "state": s.state,
                    "reached": s.reached,
                    "commands": s.commands,
                    "telemetry": s.telemetry,
                    "reconnects": s.reconnects,
                    "drops": s.drops,
                    "error": s.error,
                }
                for name, s in stats.items()
            }
        )
        return
    rows = [
        [
            escape(name),
            escape(s.start),
            escape(s.marker or ("→".join(s.lane) if s.lane else "-")),
            s.state,
            str(len(s.reached)),
            str(s.commands),
            str(s.reconnects),
            escape(s.error or ""),
        ]
        for name, s in stats.items()
    ]
    table(
        ["ROBOT", "START", "AT", "STATE", "REACHED", "COMMANDS", "RECONNECTS", "ERROR"],
        rows,
        "no robots",
    )
    reached = sum(len(s.reached) for s in stats.values())
    reconnects = sum(s.reconnects for s in stats.values())
    typer.echo(f"{len(stats)} robots, {reached} markers reached, {reconnects} reconnects")


@app.command("vda")
def vda(
    n: Annotated[int, typer.Argument(min=1, help="how many vehicles")],
    broker: Annotated[str, typer.Option(help="the MQTT broker, mqtt://[user:password@]host:port")],
    start: Annotated[
        str, typer.Option(help="start nodes a,b,c: vehicle i stands on the i-th (one each)")
    ],
    manufacturer: Annotated[str, typer.Option(help="their manufacturer (topic level)")] = "sim",
    serial_prefix: Annotated[str, typer.Option(help="serial numbers PREFIX1 … PREFIXN")] = "sn",
    speed: Annotated[float, typer.Option(min=0.001, help="metres per second")] = 1.0,
    interface: Annotated[str, typer.Option(help="interfaceName topic level")] = "uagv",
    major: Annotated[str, typer.Option(help="majorVersion topic level")] = "v2",
    state_every: Annotated[float, typer.Option(min=0.01, help="seconds between states")] = 1.0,
    visualization_every: Annotated[
        float, typer.Option(min=0.01, help="seconds between visualization messages")
    ] = 0.1,
    credentials: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="YAML/JSON file: serial number -> {username, password} on the broker, "
            "one login per vehicle (instead of the broker URL's)",
        ),
    ] = None,
    procs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="processes to run the vehicles in "
            "(default: one per 500 vehicles, at most one per core)",
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="stop after N seconds (default: Ctrl-C)")
    ] = None,
) -> None:
    """Run N VDA 5050 vehicles (written from the standard) on an MQTT broker; register them
    in corral with `corral robot add-vda` (manufacturer, serial PREFIX1 … PREFIXN). Each has
    its own MQTT connection and last will; the vehicles of a process run from one loop."""
    from corral.robot.vda_sim import (
        SimVehicle,
        VehicleProcesses,
        default_procs,
        run_loop,
        run_vehicles,
    )

    nodes = [s for s in start.split(",") if s]
    if len(nodes) < n:
        raise CliError(f"--start names {len(nodes)} node(s) for {n} vehicles")
    serials = [f"{serial_prefix}{i}" for i in range(1, n + 1)]
    logins = _logins(credentials, serials) if credentials is not None else {}
    vehicles = [
        SimVehicle(
            broker,
            manufacturer,
            serial,
            nodes[i],
            speed=speed,
            interface=interface,
            major=major,
            state_every=state_every,
            visualization_every=visualization_every,
            username=logins.get(serial, (None, None))[0],
            password=logins.get(serial, (None, None))[1],
        )
        for i, serial in enumerate(serials)
    ]
    spread = min(procs or default_procs(n), n)
    where = urlsplit(broker)
    _line(
        f"{n} VDA 5050 vehicle(s) of {manufacturer} on {where.hostname}:{where.port or 1883}"
        + (f" in {spread} processes" if spread > 1 else "")
    )

    async def main() -> list[SimVehicle]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        if duration is not None:
            loop.call_later(duration, stop.set)
        if spread == 1:
            await run_vehicles(vehicles, stop)
            return vehicles
        workers = await asyncio.to_thread(VehicleProcesses(vehicles, spread).start)
        try:
            await stop.wait()
        finally:
            ended = await asyncio.to_thread(workers.stop)
        return ended

    ended: list[SimVehicle] = run_loop(main())
    for vehicle in ended:
        problem = f"; {vehicle.link_error}" if vehicle.link_error else ""
        _line(
            f"{vehicle.serial}: at {vehicle.last_node}, passed {len(vehicle.reached)} node(s)"
            + problem
        )


def _logins(path: Path, serials: list[str]) -> dict[str, tuple[str, str]]:
    """The credentials file: `SERIAL: {username: U, password: P}` for each vehicle."""
    import yaml  # only with a file

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {path}: {exc}", 2) from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: a mapping of serial number to username and password", 2)
    logins: dict[str, tuple[str, str]] = {}
    for serial in serials:
        entry = data.get(serial)
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("username", "password")
        ):
            raise CliError(f"{path}: {serial}: needs a username and a password (strings)", 2)
        logins[serial] = (entry["username"], entry["password"])
    return logins
