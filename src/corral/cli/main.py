"""The `corral` command: global options, sub-command groups, and the error boundary.

`run()` is the console-script entry point; it turns every failure into one line.
"""

import sys
from typing import Annotated

import typer

from corral import __version__
from corral.cli import (
    agent,
    devices,
    events,
    farm,
    fleet,
    hosts,
    serve,
    sessions,
    sim,
    stacks,
    tokens,
)
from corral.cli.client import CliError, write_config
from corral.cli.context import CliState, state
from corral.cli.output import emit_json, err, out

app = typer.Typer(
    help="corral: one control plane for robot and edge fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(hosts.app, name="host")
app.add_typer(tokens.app, name="token")
app.add_typer(stacks.app, name="stack")
app.add_typer(sessions.templates, name="template")
app.add_typer(sessions.sessions, name="session")
app.add_typer(farm.tasks, name="task")
app.add_typer(farm.farm, name="farm")
app.add_typer(farm.brokers, name="broker")
app.add_typer(farm.triggers, name="trigger")
app.add_typer(devices.devices, name="device")
app.add_typer(devices.modules, name="module")
app.add_typer(devices.deployments, name="deployment")
app.add_typer(devices.wasm, name="wasm")
app.add_typer(fleet.robots, name="robot")
app.add_typer(fleet.maps, name="map")
app.add_typer(fleet.missions, name="mission")
app.add_typer(fleet.fleet, name="fleet")
app.add_typer(sim.app, name="sim")
for command in (stacks.up, stacks.ps, stacks.down, stacks.start, stacks.stop, stacks.restart):
    app.command(command.__name__)(command)
app.command("logs")(stacks.logs)
app.command("serve")(serve.serve)
app.command("reset-admin-token")(serve.reset_admin)
app.command("events")(events.events)
app.command("agent")(agent.agent)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"corral {__version__}")
        raise typer.Exit


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="API URL [$CORRAL_URL]")] = None,
    token: Annotated[str | None, typer.Option(help="API token [$CORRAL_TOKEN]")] = None,
    json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print version")
    ] = False,
) -> None:
    ctx.obj = CliState(url=url, token=token, json=json)


@app.command("login")
def login(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="API URL")] = "",
    token: Annotated[str, typer.Option(prompt=True, hide_input=True, help="API token")] = "",
) -> None:
    """Check a URL and token, then save them for later commands (file mode 0600)."""
    cli = state(ctx)
    cli.url, cli.token = url or cli.url, token
    api = cli.api()
    who = api.call("GET", "/whoami")
    path = write_config(api.url, token)
    out.print(f"logged in to {api.url} as {who['name']} ({who['role']}); saved to {path}")


@app.command("whoami")
def whoami(ctx: typer.Context) -> None:
    """Show the token's name and role."""
    who = state(ctx).api().call("GET", "/whoami")
    if state(ctx).json:
        emit_json(who)
    else:
        out.print(f"{who['name']} ({who['role']}), token {who['token_id']}")


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Server version, database and host counts."""
    info = state(ctx).api().call("GET", "/status")
    if state(ctx).json:
        emit_json(info)
        return
    out.print(f"corral {info['version']} at {state(ctx).api().url}")
    out.print(f"database  {info['database']}")
    out.print(f"hosts     {info['hosts_reachable']}/{info['hosts']} reachable")


def run() -> None:
    try:
        app()
    except CliError as exc:
        err.print(f"error: {exc.message}", markup=False)
        sys.exit(exc.code)
