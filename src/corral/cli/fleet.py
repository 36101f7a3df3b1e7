"""`corral robot …`, `corral map …`, `corral mission …` and `corral fleet stop|resume|estop`:
the robot fleet from a shell, over the REST API.

A robot's credential is printed once, by `robot add` and `robot rotate`.
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.cli.client import path_part
from corral.cli.context import state
from corral.cli.output import ago, emit_json, out, table
from corral.exits import CliError
from corral.model.vehiclesfile import parse_vehicles_file
from corral.model.yamlfile import FileInvalid

robots = typer.Typer(help="Robots and their credentials.", no_args_is_help=True)
maps = typer.Typer(help="Maps: markers and lanes.", no_args_is_help=True)
missions = typer.Typer(help="Missions: a robot's destination and objective.", no_args_is_help=True)
fleet = typer.Typer(help="Orders to the whole fleet or a group.", no_args_is_help=True)


@robots.command("add")
def add(
    ctx: typer.Context,
    name: str,
    map_: Annotated[str | None, typer.Option("--map", help="the map it drives on")] = None,
    marker: Annotated[str | None, typer.Option(help="the marker it stands on now")] = None,
    group: Annotated[str, typer.Option(help="group, for broadcasts")] = "",
    priority: Annotated[int, typer.Option(help="higher goes first in a deadlock")] = 0,
    signed: Annotated[bool, typer.Option(help="require an HMAC on every message")] = False,
) -> None:
    """Register a robot and print its credential (shown once)."""
    body = {"name": name, "group": group, "priority": priority, "signed": signed}
    body.update({k: v for k, v in (("map", map_), ("marker", marker)) if v is not None})
    answer = state(ctx).api().call("POST", "/fleet/robots", json=body)
    _credential(ctx, name, answer)


@robots.command("add-vda")
def add_vda(
    ctx: typer.Context,
    name: str,
    manufacturer: Annotated[str, typer.Option(help="its VDA 5050 manufacturer")],
    serial: Annotated[str, typer.Option(help="its VDA 5050 serialNumber")],
    map_: Annotated[str | None, typer.Option("--map", help="the map it drives on")] = None,
    marker: Annotated[str | None, typer.Option(help="the node it stands on now")] = None,
    group: Annotated[str, typer.Option(help="group, for broadcasts")] = "",
    priority: Annotated[int, typer.Option(help="higher goes first in a deadlock")] = 0,
) -> None:
    """Register a VDA 5050 vehicle (it talks over MQTT: no credential of corral's)."""
    body = {
        "name": name,
        "manufacturer": manufacturer,
        "serial_number": serial,
        "group": group,
        "priority": priority,
    }
    body.update({k: v for k, v in (("map", map_), ("marker", marker)) if v is not None})
    answer = state(ctx).api().call("POST", "/fleet/vda5050/vehicles", json=body)
    if state(ctx).json:
        emit_json(answer)
        return
    out.print(f"robot {name}: VDA 5050 vehicle {manufacturer}/{serial}")


@robots.command("apply-vda")
def apply_vda(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="vehicles file (vehicles: NAME: {...})")],
    prune: Annotated[bool, typer.Option(help="remove VDA 5050 vehicles the file lacks")] = False,
) -> None:
    """Make corral's VDA 5050 vehicles match a vehicles file (idempotent)."""
    try:
        specs = parse_vehicles_file(file.read_text(), str(file))
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}", 2) from None
    except FileInvalid as exc:
        raise CliError(str(exc), 2) from None
    body = {"vehicles": [s.model_dump(exclude_none=True) for s in specs], "prune": prune}
    result = state(ctx).api().call("PUT", "/fleet/vda5050/vehicles", json=body)
    if state(ctx).json:
        emit_json(result)
        return
    for name, outcome in sorted(result["outcomes"].items()):
        out.print(f"{name}: {outcome}")


def _credential(ctx: typer.Context, name: str, answer: dict[str, Any]) -> None:
    if state(ctx).json:
        emit_json(answer)
        return
    out.print(f"robot {name}: token (shown once):")
    out.print(answer["token"])
    if answer.get("key"):
        out.print("HMAC key (shown once):")
        out.print(answer["key"])


@robots.command("ls")
def list_robots(ctx: typer.Context) -> None:
    """Robots, where they are and how they are."""
    found = state(ctx).api().call("GET", "/fleet/robots")
    if state(ctx).json:
        emit_json(found)
        return
    table(ROBOT_COLUMNS, [_robot_row(r) for r in found], "no robots")


ROBOT_COLUMNS = ["NAME", "STATE", "MAP", "WHERE", "BATTERY", "SEEN"]


def _robot_row(r: dict[str, Any]) -> list[str]:
    t = r["telemetry"]
    lane = t.get("lane")
    where = r["marker"] or "-"
    if lane:
        where = f"{lane[0]}>{lane[1]} {t.get('progress', 0):.0%}"
    battery = t.get("battery")
    return [
        r["name"],
        r["state"],
        r["map"] or "-",
        where,
        f"{battery:.0f}%" if isinstance(battery, int | float) else "-",
        ago(r["last_seen"]),
    ]


@robots.command("watch")
def watch(
    ctx: typer.Context,
    every: Annotated[
        float, typer.Option(help="seconds between updates (0.1-10)", min=0.1, max=10.0)
    ] = 0.5,
) -> None:
    """Follow the robots live: a line for each robot whose place, state or telemetry
    changed (every robot at first, and again after a reconnect), and for each robot
    removed, until interrupted; --json: a document per line."""
    cli = state(ctx)

    def printed(frame: Any) -> None:  # robots' documents, or the names of robots removed
        for item in frame if isinstance(frame, list) else []:
            if cli.json:  # a document per line, for jq -c and the like
                line = item if isinstance(item, dict) else {"removed": item}
                sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
            elif isinstance(item, dict):
                out.print("  ".join(_robot_row(item)))
            else:
                out.print(f"{item}  removed")
        sys.stdout.flush()  # each update as it comes, into a pipe too

    # the stream ends when the leader changes: follow the next one
    cli.api().follow("/fleet/stream", {"every": every}, printed)


@robots.command("show")
def show(ctx: typer.Context, name: str) -> None:
    """One robot, with its latest commands."""
    api = state(ctx).api()
    emit_json(
        {
            **api.call("GET", f"/fleet/robots/{path_part(name)}"),
            "commands": api.call("GET", f"/fleet/robots/{path_part(name)}/commands/log"),
        }
    )


@robots.command("rm")
def remove(ctx: typer.Context, name: str) -> None:
    """Remove a robot and revoke its token."""
    state(ctx).api().call("DELETE", f"/fleet/robots/{path_part(name)}")
    out.print(f"robot {name} removed")


@robots.command("rotate")
def rotate(ctx: typer.Context, name: str) -> None:
    """Give a robot a new credential; the old one stops working."""
    _credential(ctx, name, state(ctx).api().call("POST", f"/fleet/robots/{path_part(name)}/rotate"))


@robots.command("clear")
def clear(ctx: typer.Context, name: str) -> None:
    """Release what an offline robot holds (only when it is really gone from there)."""
    answer = state(ctx).api().call("POST", f"/fleet/robots/{path_part(name)}/clear")
    out.print(f"released: {', '.join(answer['released']) or 'nothing'}")


@robots.command("send")
def send(
    ctx: typer.Context,
    name: str,
    kind: Annotated[str, typer.Argument(help="stop, resume, estop or custom")],
    payload: Annotated[str | None, typer.Option(help="JSON payload for custom")] = None,
) -> None:
    """Send one robot a command."""
    body: dict[str, Any] = {"kind": kind}
    if payload is not None:
        body["payload"] = _json(payload)
    answer = state(ctx).api().call("POST", f"/fleet/robots/{path_part(name)}/commands", json=body)
    out.print(f"command {answer['id']} queued for {name}")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise CliError(f"--payload is not valid JSON: {text!r}", 2) from None


@maps.command("push")
def push(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="YAML or JSON map")],
) -> None:
    """Upload a map (or replace it: robots keep their places)."""
    text = file.read_text()
    answer = (
        state(ctx)
        .api()
        .call(
            "POST",
            "/fleet/maps",
            content=text.encode(),
            headers={"content-type": "application/yaml"},
        )
    )
    out.print(
        f"map {answer['name']}: {len(answer['markers'])} markers, {len(answer['lanes'])} lanes"
    )


@maps.command("ls")
def list_maps(ctx: typer.Context) -> None:
    """Maps."""
    found = state(ctx).api().call("GET", "/fleet/maps")
    if state(ctx).json:
        emit_json(found)
        return
    rows = [[m["name"], str(len(m["markers"])), str(len(m["lanes"]))] for m in found]
    table(["NAME", "MARKERS", "LANES"], rows, "no maps")


@maps.command("traffic")
def traffic(ctx: typer.Context, name: str) -> None:
    """Who holds which marker and lane, and who waits for whom."""
    emit_json(state(ctx).api().call("GET", f"/fleet/maps/{path_part(name)}/traffic"))


@missions.command("new")
def new(
    ctx: typer.Context,
    robot: str,
    goal: Annotated[str, typer.Argument(help="destination marker")],
    objective: Annotated[str, typer.Option(help="what to do there")] = "",
    action: Annotated[
        list[str] | None,
        typer.Option(
            help="a VDA 5050 action at the goal, TYPE[:KEY=VALUE,...] (e.g. "
            "pick:stationType=floor,loadType=EPAL); repeat for more"
        ),
    ] = None,
) -> None:
    """Send a robot to a marker."""
    body: dict[str, Any] = {"robot": robot, "goal": goal, "objective": objective}
    if action:
        body["actions"] = [_action(a) for a in action]
    answer = state(ctx).api().call("POST", "/fleet/missions", json=body)
    if state(ctx).json:
        emit_json(answer)
        return
    out.print(f"mission {answer['id']}: {robot} to {goal} via {' > '.join(answer['route'])}")


def _action(text: str) -> dict[str, Any]:
    """`pick:stationType=floor,loadType=EPAL` as a mission action (the API checks it)."""
    kind, _, rest = text.partition(":")
    parameters = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--action")
        parameters[key.strip()] = value.strip()
    return {"type": kind.strip(), "parameters": parameters}


@missions.command("ls")
def list_missions(
    ctx: typer.Context,
    state_: Annotated[str | None, typer.Option("--state", help="active, done, …")] = None,
) -> None:
    """Missions, newest first."""
    params = {"state": state_} if state_ else {}
    found = state(ctx).api().call("GET", "/fleet/missions", params=params)
    if state(ctx).json:
        emit_json(found)
        return
    rows = [
        [
            str(m["id"]),
            m["robot"],
            m["goal"],
            m["state"],
            f"{m['at']} ({m['progress']}/{len(m['route']) - 1})",
            m["objective"] or "-",
        ]
        for m in found
    ]
    table(["ID", "ROBOT", "GOAL", "STATE", "AT", "OBJECTIVE"], rows, "no missions")


@missions.command("cancel")
def cancel(ctx: typer.Context, mission: int) -> None:
    """Cancel a mission (the robot stops at its next marker)."""
    state(ctx).api().call("DELETE", f"/fleet/missions/{mission}")
    out.print(f"mission {mission} cancelled")


def _broadcast(ctx: typer.Context, kind: str, group: str | None) -> None:
    body: dict[str, Any] = {"kind": kind, "group": group}
    answer = state(ctx).api().call("POST", "/fleet/broadcast", json=body)
    out.print(f"{kind} sent to {len(answer['robots'])} robot(s)")


@fleet.command("stop")
def stop(
    ctx: typer.Context, group: Annotated[str | None, typer.Option(help="only this group")] = None
) -> None:
    """Stop every robot (or a group) where it is."""
    _broadcast(ctx, "stop", group)


@fleet.command("resume")
def resume(
    ctx: typer.Context, group: Annotated[str | None, typer.Option(help="only this group")] = None
) -> None:
    """Let stopped robots carry on."""
    _broadcast(ctx, "resume", group)


@fleet.command("estop")
def estop(
    ctx: typer.Context, group: Annotated[str | None, typer.Option(help="only this group")] = None
) -> None:
    """Emergency stop: overtakes everything queued."""
    _broadcast(ctx, "estop", group)
