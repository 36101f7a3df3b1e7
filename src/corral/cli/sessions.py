"""`corral template add|ls|show|rm` and `corral session new|ls|show|rm|logs`: sessions.

Parameters are given as `-p name=value` and typed by the template's declarations, so
`-p count=1000 -p plain_stream=false` sends a number and a boolean.
"""

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.cli.client import Api
from corral.cli.context import state
from corral.cli.output import ago, emit_json, out, size, table
from corral.exits import CliError
from corral.model.compose import parse_duration
from corral.model.views import ACTIVE_STATES, UNKNOWN

templates = typer.Typer(
    help="Session templates: stack files with parameters.", no_args_is_help=True
)
sessions = typer.Typer(help="Sessions: pipelines started from templates.", no_args_is_help=True)
START_TIMEOUT = 600.0  # seconds `session new` waits for a session (image builds included)


@templates.command("add")
def add(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="template file (YAML)")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="name [from the file]")] = None,
) -> None:
    """Register a template (or replace it); build contexts resolve against its folder."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}", 2) from None
    except UnicodeDecodeError:
        raise CliError(f"{file} is not UTF-8 text", 2) from None
    body = {"name": name, "file": text, "base_dir": str(file.resolve().parent)}
    result = state(ctx).api().call("POST", "/templates", json=body)
    if state(ctx).json:
        emit_json(result)
    else:
        out.print(f"template {result['name']} {result['outcome']}")
        _template_details(result["template"])


@templates.command("ls")
def list_templates(ctx: typer.Context) -> None:
    """List templates."""
    found = state(ctx).api().call("GET", "/templates")
    if state(ctx).json:
        emit_json(found)
        return
    rows = [
        [
            t["name"],
            ", ".join(t["services"]),
            ", ".join(p["name"] for p in t["parameters"]) or "-",
            f"{t['cpus']:g}",
            size(t["memory"]),
            t["description"],
        ]
        for t in found
    ]
    table(
        ["NAME", "SERVICES", "PARAMETERS", "CPUS", "MEMORY", "DESCRIPTION"],
        rows,
        "no templates (add one with `corral template add FILE`)",
    )


@templates.command("show")
def show_template(ctx: typer.Context, name: str) -> None:
    """A template's parameters, services and what a session reserves."""
    found = state(ctx).api().call("GET", f"/templates/{name}")
    if state(ctx).json:
        emit_json(found)
    else:
        _template_details(found)


def _template_details(t: dict[str, Any]) -> None:
    out.print(f"{t['name']}: {t['description'] or '(no description)'}")
    out.print(
        f"services {', '.join(t['services'])}; reserves {t['cpus']:g} CPUs, "
        f"{size(t['memory'])}; ttl {t['ttl_s']:g} s"
    )
    rows = [
        [
            p["name"],
            p["type"],
            "required" if p["default"] is None else str(p["default"]).lower(),
            _bounds(p),
            p["description"],
        ]
        for p in t["parameters"]
    ]
    table(["PARAMETER", "TYPE", "DEFAULT", "BOUNDS", "DESCRIPTION"], rows, "no parameters")


def _bounds(p: dict[str, Any]) -> str:
    if p["choices"]:
        return " | ".join(p["choices"])
    low, high = p["min"], p["max"]
    if low is None and high is None:
        return "-"
    return f"{'' if low is None else low}..{'' if high is None else high}"


@templates.command("rm")
def remove_template(ctx: typer.Context, name: str) -> None:
    """Remove a template (its sessions keep their copy)."""
    state(ctx).api().call("DELETE", f"/templates/{name}")
    out.print(f"template {name} removed")


def _typed(api: Api, template: str, given: list[str]) -> dict[str, Any]:
    declared = {
        p["name"]: p["type"] for p in api.call("GET", f"/templates/{template}")["parameters"]
    }
    params: dict[str, Any] = {}
    for item in given:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CliError(f"parameter {item!r}: write name=value", 2)
        kind = declared.get(key)
        if kind == "int":
            try:
                params[key] = int(value)
            except ValueError:
                raise CliError(f"parameter {key}: {value!r} is not a whole number", 2) from None
        elif kind == "bool":
            lowered = value.lower()
            if lowered not in ("true", "false", "yes", "no", "1", "0"):
                raise CliError(f"parameter {key}: {value!r} is not true or false", 2)
            params[key] = lowered in ("true", "yes", "1")
        else:
            params[key] = value  # str, or unknown: the server names it
    return params


@sessions.command("new")
def new(
    ctx: typer.Context,
    template: Annotated[str, typer.Argument(help="template name")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="name=value (repeat)")
    ] = None,
    ttl: Annotated[str | None, typer.Option(help="lifetime, e.g. 90s, 10m [template's]")] = None,
    queue: Annotated[bool, typer.Option(help="wait in the queue when no host has room")] = False,
    wait: Annotated[bool, typer.Option(help="answer once it runs")] = True,
) -> None:
    """Start a session of a template and show its containers and endpoints."""
    api = state(ctx).api()
    body: dict[str, Any] = {"params": _typed(api, template, param or []), "queue": queue}
    if ttl is not None:
        try:
            body["ttl"] = parse_duration(ttl)
        except ValueError as exc:
            raise CliError(f"--ttl {ttl!r}: {exc}", 2) from None
    api.timeout = START_TIMEOUT
    result = api.call("POST", f"/templates/{template}/sessions", json=body, params={"wait": wait})
    _show(ctx, result)
    if result["state"] == "failed":
        raise CliError(f"session {result['id']} failed: {result['reason']}", 1)


@sessions.command("ls")
def list_sessions(
    ctx: typer.Context,
    state_: Annotated[str | None, typer.Option("--state", help="only this state")] = None,
    template: Annotated[str | None, typer.Option(help="only this template")] = None,
    limit: Annotated[int, typer.Option(help="newest N")] = 50,
) -> None:
    """List sessions, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if state_:
        params["state"] = state_
    if template:
        params["template"] = template
    found = state(ctx).api().call("GET", "/sessions", params=params)
    if state(ctx).json:
        emit_json(found)
        return
    rows = [
        [
            s["id"],
            s["template"],
            s["state"]
            + (
                ""
                if s["cleaned_at"] or s["state"] in (*ACTIVE_STATES, UNKNOWN)
                else " (not cleaned)"
            ),
            s["host"] or "-",
            ago(s["created_at"]),
            _endpoints(s),
            s["reason"],
        ]
        for s in found
    ]
    table(
        ["ID", "TEMPLATE", "STATE", "HOST", "CREATED", "ENDPOINTS", "REASON"], rows, "no sessions"
    )


def _endpoints(s: dict[str, Any]) -> str:
    return (
        " ".join(f"{e['service']}={e['address']}:{e['host_port']}" for e in s["endpoints"]) or "-"
    )


@sessions.command("show")
def show(ctx: typer.Context, id: str) -> None:
    """A session's state, containers (with exit codes) and endpoints."""
    _show(ctx, state(ctx).api().call("GET", f"/sessions/{id}"))


def _show(ctx: typer.Context, s: dict[str, Any]) -> None:
    if state(ctx).json:
        emit_json(s)
        return
    out.print(
        f"session {s['id']} ({s['template']}): {s['state']}"
        + (f": {s['reason']}" if s["reason"] else "")
    )
    out.print(f"host {s['host'] or '-'}, network {s['network']}, endpoints {_endpoints(s)}")
    rows = [
        [
            c["service"],
            c["name"],
            c["container_id"][:12] or "-",
            c["state"],
            "-" if c["exit_code"] is None else str(c["exit_code"]),
        ]
        for c in s["containers"]
    ]
    table(["SERVICE", "CONTAINER", "ID", "STATE", "EXIT"], rows, "no containers")


@sessions.command("rm")
def remove(
    ctx: typer.Context, ids: Annotated[list[str], typer.Argument(help="session ids")]
) -> None:
    """End sessions now and remove their containers and network."""
    for id in ids:
        result = state(ctx).api().call("DELETE", f"/sessions/{id}")
        if state(ctx).json:
            emit_json(result)
        else:
            cleaned = (
                "removed" if result["cleaned_at"] else "ended (removal pending: host unreachable)"
            )
            out.print(f"session {id} {result['state']}, {cleaned}")


@sessions.command("logs")
def logs(
    ctx: typer.Context,
    id: str,
    service: str,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    tail: Annotated[int, typer.Option(help="lines from the end")] = 200,
) -> None:
    """Print a session container's output (kept after clean-up)."""
    path = f"/sessions/{id}/services/{service}/logs"
    for chunk in state(ctx).api().raw_stream(path, {"tail": tail, "follow": follow}):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
