"""The `corral` command: global options, sub-command groups, and the error boundary.

`run()` is the console-script entry point; it loads only the command module it runs and
turns every failure into one line.
"""

import sys
from importlib import import_module
from typing import Annotated, Any

import typer

from corral import __version__
from corral.cli.context import CliState, state
from corral.exits import CliError

# Every sub-command: (module under corral.cli, attribute, one-line help). A command module
# is imported only when its command runs, so `corral --help` and `corral stack ls` do not
# pay for the others' imports; the help lines stand in for the modules in listings (a
# unit test checks they match).
GROUPS: dict[str, tuple[str, str, str]] = {
    "host": ("hosts", "app", "Docker engines corral manages."),
    "token": ("tokens", "app", "API tokens and their roles."),
    "stack": ("stacks", "app", "Stacks: compose files deployed across hosts."),
    "template": ("sessions", "templates", "Session templates: stack files with parameters."),
    "session": ("sessions", "sessions", "Sessions: pipelines started from templates."),
    "task": ("farm", "tasks", "Tasks: work for the robot arm (and robots)."),
    "farm": ("farm", "farm", "The print farm: printers, beds, racks, the arm."),
    "broker": ("farm", "brokers", "Broker connections."),
    "trigger": ("farm", "triggers", "Trigger rules."),
    "device": ("devices", "devices", "Wasm devices (supervisors)."),
    "module": ("devices", "modules", "WebAssembly modules: the package manager."),
    "deployment": ("devices", "deployments", "Deployments of module functions on devices."),
    "wasm": ("devices", "wasm", "Wasm-IoT data: export to an init/ folder."),
    "robot": ("fleet", "robots", "Robots and their credentials."),
    "map": ("fleet", "maps", "Maps: markers and lanes."),
    "mission": ("fleet", "missions", "Missions: a robot's destination and objective."),
    "fleet": ("fleet", "fleet", "Orders to the whole fleet or a group."),
    "sim": ("sim", "app", "Simulators: virtual robots for the fleet."),
}
COMMANDS: dict[str, tuple[str, str, str]] = {
    "up": ("stacks", "up", "Create or update a stack from a compose file and converge it."),
    "ps": ("stacks", "ps", "Show each replica of each service: host, container, state."),
    "down": ("stacks", "down", "Remove a stack: its containers, networks and volumes corral made."),
    "start": ("stacks", "start", "Start services (all when none are named)."),
    "stop": ("stacks", "stop", "Stop services; they stay stopped until `corral start`."),
    "restart": ("stacks", "restart", "Restart services (all when none are named)."),
    "logs": ("stacks", "logs", "Print a service's container output."),
    "serve": ("serve", "serve", "Run the corral server (API, docs, dashboard, host monitor)."),
    "reset-admin-token": (
        "serve",
        "reset_admin",
        "Revoke every admin token and print a new one (run where the database is).",
    ),
    "events": ("events", "events", "Show recent events; with -f, follow new ones as they happen."),
    "agent": (
        "agent",
        "agent",
        "Run this machine as a Wasm device: the supervisor API, wasmtime and an mDNS advert.",
    ),
}
VALUED = ("--url", "--token")  # global options that take a value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"corral {__version__}")
        raise typer.Exit


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


def login(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="API URL")] = "",
    token: Annotated[str, typer.Option(prompt=True, hide_input=True, help="API token")] = "",
) -> None:
    """Check a URL and token, then save them for later commands (file mode 0600)."""
    from corral.cli.client import write_config
    from corral.cli.output import out

    cli = state(ctx)
    cli.url, cli.token = url or cli.url, token
    api = cli.api()
    who = api.call("GET", "/whoami")
    path = write_config(api.url, token)
    out.print(f"logged in to {api.url} as {who['name']} ({who['role']}); saved to {path}")


def whoami(ctx: typer.Context) -> None:
    """Show the token's name and role."""
    from corral.cli.output import emit_json, out

    who = state(ctx).api().call("GET", "/whoami")
    if state(ctx).json:
        emit_json(who)
    else:
        out.print(f"{who['name']} ({who['role']}), token {who['token_id']}")


def status(ctx: typer.Context) -> None:
    """Server version, database and host counts."""
    from corral.cli.output import emit_json, out

    info = state(ctx).api().call("GET", "/status")
    if state(ctx).json:
        emit_json(info)
        return
    out.print(f"corral {info['version']} at {state(ctx).api().url}")
    out.print(f"database  {info['database']}")
    out.print(f"hosts     {info['hosts_reachable']}/{info['hosts']} reachable")


def _stand_in(_: typer.Context) -> None:
    """Never runs: a listing's entry for a command whose module was not loaded."""


def build(wanted: str | None = None) -> typer.Typer:
    """The command tree. `wanted`: the one sub-command to load (None: none, only their
    help lines); "*" loads every one."""
    app = typer.Typer(
        help="corral: one control plane for robot and edge fleets.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.callback()(main)

    def real(module: str, attribute: str) -> Any:
        return getattr(import_module(f"corral.cli.{module}"), attribute)

    for name, (module, attribute, help_line) in COMMANDS.items():
        if wanted in (name, "*"):
            app.command(name)(real(module, attribute))
        else:
            app.command(name, help=help_line)(_stand_in)
    app.command("login")(login)
    app.command("whoami")(whoami)
    app.command("status")(status)
    for name, (module, attribute, help_line) in GROUPS.items():
        if wanted in (name, "*"):
            app.add_typer(real(module, attribute), name=name)
        else:
            app.add_typer(typer.Typer(help=help_line, no_args_is_help=True), name=name)
    return app


def command_named(args: list[str]) -> str | None:
    """The sub-command a command line runs: its first word that is not a global option."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in GROUPS or arg in COMMANDS else None
    return None


def global_flags_first(args: list[str]) -> list[str]:
    """`--json` is a global option, but users type it after the command too
    (`corral host ls --json`): move it before the command (not past a `--`)."""
    end = args.index("--") if "--" in args else len(args)
    if "--json" not in args[:end]:
        return args
    return ["--json", *(a for a in args[:end] if a != "--json"), *args[end:]]


def run() -> None:
    args = global_flags_first(sys.argv[1:])
    try:
        build(command_named(args))(args=args)
    except CliError as exc:
        from corral.cli.output import err

        err.print(f"error: {exc.message}", markup=False)
        sys.exit(exc.code)
