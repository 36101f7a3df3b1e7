"""`corral up|ps|down|start|stop|restart|logs` and `corral stack validate|ls`: stacks.

`up` sends the compose file with the variables it uses from this shell, and prints each
service's progress from the event stream while the server converges.
"""

import os
import re
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.cli.client import Api
from corral.cli.context import state
from corral.cli.output import emit_json, err, out, table
from corral.exits import CliError

app = typer.Typer(help="Stacks: compose files deployed across hosts.", no_args_is_help=True)
ServicesArg = Annotated[list[str] | None, typer.Argument(help="services; all when omitted")]
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


ModeOption = Annotated[
    str,
    typer.Option(help="containers or swarm, over the file's x-corral mode (kept with the stack)"),
]


def _body(file: Path, name: str | None, mode: str = "") -> dict[str, Any]:
    try:
        text = file.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}", 2) from None
    folder = file.resolve().parent
    chosen = name or re.sub(r"[^a-z0-9_.-]", "-", folder.name.lower()).strip("-.") or "stack"
    env = {v: os.environ[v] for v in set(VARIABLE.findall(text)) if v in os.environ}
    body = {"name": chosen, "file": text, "env": env, "base_dir": str(folder)}
    return body | ({"mode": mode} if mode else {})


SLOT_HEADERS = ["SERVICE", "REPLICA", "HOST", "CONTAINER", "STATE", "HEALTH", "REASON"]


def _show(ctx: typer.Context, stack: dict[str, Any]) -> None:
    if state(ctx).json:
        emit_json(stack)
        return
    rows = [
        [
            s["service"],
            str(s["replica"]),
            s["host"] or "-",
            s["container"],
            s["state"] + (f" ({s['exit_code']})" if s["state"] == "exited" else ""),
            s["health"] or "-",
            s["reason"] or "",
        ]
        for s in stack["slots"]
    ]
    mode = " (swarm services)" if stack.get("mode") == "swarm" else ""
    out.print(f"stack {stack['name']}: {stack['state']}{mode}")
    pending = stack.get("pending_removal") or {}
    for host, why in sorted(pending.items()):
        out.print(f"  left on {host}, removed when it answers: {why}", markup=False)
    if not pending:
        table(SLOT_HEADERS, rows, "no containers")


class _Progress:
    """Prints a stack's events while `up` waits: live from the stream, then any the stream
    had not delivered when the answer came (so nothing is missed or printed twice)."""

    def __init__(self, api: Api, name: str) -> None:
        self.api = api
        self.resource = f"stack/{name}*"
        newest = api.call("GET", "/events", params={"limit": 1, "newest_first": True})
        self.start = newest[0]["id"] if newest else 0
        self.printed: set[int] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._live, daemon=True).start()

    def _print(self, event: dict[str, Any]) -> None:
        with self.lock:
            if event["id"] in self.printed:
                return
            self.printed.add(event["id"])
            err.print(f"  {event['message']}", markup=False, highlight=False)

    def _live(self) -> None:
        try:
            for event in self.api.stream("/events/stream", {"resource": self.resource}, self.start):
                self._print(event)
        except CliError:
            return

    def finish(self) -> None:
        params = {"resource": self.resource, "after_id": self.start, "limit": 1000}
        for event in self.api.call("GET", "/events", params=params):
            self._print(event)


def up(
    ctx: typer.Context,
    file: Annotated[Path, typer.Option("--file", "-f", help="compose file")] = Path("compose.yml"),
    name: Annotated[str | None, typer.Option("--name", "-n", help="stack name")] = None,
    wait: Annotated[bool, typer.Option(help="wait until every service is placed")] = True,
    mode: ModeOption = "",
) -> None:
    """Create or update a stack from a compose file and converge it."""
    api = state(ctx).api()
    body = _body(file, name, mode)
    progress = _Progress(api, body["name"]) if wait and not state(ctx).json else None
    result = api.call("POST", "/stacks", json=body, params={"wait": wait})
    if progress is not None:
        progress.finish()
    _show(ctx, result)
    if any(s["state"] in ("failed",) for s in result["slots"]):
        raise CliError(f"stack {body['name']}: some containers failed (see REASON)", 1)


def ps(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="stack; all when omitted")] = None,
) -> None:
    """Show each replica of each service: host, container, state."""
    api = state(ctx).api()
    stacks = [api.call("GET", f"/stacks/{name}")] if name else api.call("GET", "/stacks")
    if state(ctx).json:
        emit_json(stacks if name is None else stacks[0])
        return
    if not stacks:
        out.print("no stacks (create one with `corral up -f compose.yml`)")
    for stack in stacks:
        _show(ctx, stack)


def down(ctx: typer.Context, name: str) -> None:
    """Remove a stack: its containers, networks and volumes corral made."""
    result = state(ctx).api().call("DELETE", f"/stacks/{name}")
    if state(ctx).json:
        emit_json(result)
    else:
        out.print(f"stack {name} removed ({result['removed_containers']} containers)")
    pending = result.get("pending_hosts") or {}
    if pending:
        hosts = "; ".join(f"{host}: {why}" for host, why in sorted(pending.items()))
        raise CliError(
            f"not removed from hosts that did not answer ({hosts}); corral removes what "
            "is left there when they answer again",
            1,
        )


def _services_action(
    ctx: typer.Context, action: str, name: str, services: list[str]
) -> dict[str, Any]:
    result = state(ctx).api().call("POST", f"/stacks/{name}/{action}", json={"services": services})
    _show(ctx, result)
    found: dict[str, Any] = result
    return found


def start(ctx: typer.Context, name: str, services: ServicesArg = None) -> None:
    """Start services (all when none are named)."""
    _services_action(ctx, "start", name, services or [])


def stop(ctx: typer.Context, name: str, services: ServicesArg = None) -> None:
    """Stop services; they stay stopped until `corral start`."""
    result = _services_action(ctx, "stop", name, services or [])
    left = [
        f"{s['service']} on {s['host'] or 'no host'} ({s['state']}"
        + (f": {s['reason']})" if s["reason"] else ")")
        for s in result["slots"]
        if (not services or s["service"] in services) and s["state"] != "stopped"
    ]
    if left:
        raise CliError(f"not stopped: {'; '.join(left)}", 1)


def restart(ctx: typer.Context, name: str, services: ServicesArg = None) -> None:
    """Restart services (all when none are named)."""
    _services_action(ctx, "restart", name, services or [])


def logs(
    ctx: typer.Context,
    name: str,
    service: str,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    tail: Annotated[int, typer.Option(help="lines from the end")] = 200,
) -> None:
    """Print a service's container output."""
    api = state(ctx).api()
    path = f"/stacks/{name}/services/{service}/logs"
    for chunk in api.raw_stream(path, {"tail": tail, "follow": follow}):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()


@app.command("validate")
def validate(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="compose file")],
    name: Annotated[str | None, typer.Option("--name", "-n")] = None,
    mode: ModeOption = "",
) -> None:
    """Check a stack file (keys, lines, constraints, images) without deploying it."""
    body = _body(file, name, mode)
    result = state(ctx).api().call("POST", "/stacks/validate", json=body)
    if state(ctx).json:
        emit_json(result)
    elif result["valid"]:
        waves = " -> ".join(", ".join(w) for w in result["waves"])
        out.print(f"{file}: valid; start order: {waves}")
    if not result["valid"]:
        for problem in result["problems"]:
            err.print(f"{file}: {problem}", markup=False)
        raise CliError(f"{file}: {len(result['problems'])} problem(s)", 2)


@app.command("ls")
def list_stacks(ctx: typer.Context) -> None:
    """List stacks and their state."""
    stacks = state(ctx).api().call("GET", "/stacks")
    if state(ctx).json:
        emit_json(stacks)
        return
    rows = [
        [
            s["name"],
            s["state"],
            str(len(s["services"])),
            f"{sum(x['state'] == 'running' for x in s['slots'])}/{len(s['slots'])}",
        ]
        for s in stacks
    ]
    table(["NAME", "STATE", "SERVICES", "RUNNING"], rows, "no stacks")
