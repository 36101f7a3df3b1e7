"""`corral task …`, `corral farm …` (with `farm apply FILE`), `corral broker ls`,
`corral trigger ls|fire`: the print farm and the task queue from a shell.

Task parameters are `-p name=value` (text values).
"""

from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.cli.client import path_part
from corral.cli.context import state
from corral.cli.output import ago, emit_json, out, table
from corral.exits import CliError
from corral.model.farmfile import parse_farm_file
from corral.model.yamlfile import FileInvalid

tasks = typer.Typer(help="Tasks: work for the robot arm (and robots).", no_args_is_help=True)
farm = typer.Typer(help="The print farm: printers, beds, racks, the arm.", no_args_is_help=True)
brokers = typer.Typer(help="Broker connections.", no_args_is_help=True)
triggers = typer.Typer(help="Trigger rules.", no_args_is_help=True)


def _show_tasks(ctx: typer.Context, found: list[dict[str, Any]]) -> None:
    if state(ctx).json:
        emit_json(found)
        return
    rows = [
        [
            str(t["id"]),
            t["kind"],
            t["target"],
            t["state"],
            str(t["params"].get("printer_id") or "-"),
            str(t["params"].get("bed_id") or (t["params"].get("job") or {}).get("bed_id") or "-"),
            ago(t["created_at"]),
            t["reason"],
        ]
        for t in found
    ]
    table(
        ["ID", "KIND", "TARGET", "STATE", "PRINTER", "BED", "CREATED", "REASON"], rows, "no tasks"
    )


@tasks.command("ls")
def list_tasks(
    ctx: typer.Context,
    state_: Annotated[str | None, typer.Option("--state", help="only this state")] = None,
    target: Annotated[str | None, typer.Option(help="only this target")] = None,
    limit: Annotated[int, typer.Option(help="newest N")] = 50,
) -> None:
    """List tasks, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if state_:
        params["state"] = state_
    if target:
        params["target"] = target
    _show_tasks(ctx, state(ctx).api().call("GET", "/tasks", params=params))


@tasks.command("new")
def new_task(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="take, replace, homing, ...")],
    target: Annotated[str, typer.Option(help="who does it")] = "robot_arm",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="name=value")] = None,
    priority: Annotated[int, typer.Option(help="higher runs first")] = 0,
    timeout: Annotated[float, typer.Option(help="seconds of silence before it fails")] = 600,
) -> None:
    """Queue a task."""
    params: dict[str, Any] = {}
    for item in param or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CliError(f"parameter {item!r}: write name=value", 2)
        params[key] = value
    body = {"kind": kind, "target": target, "params": params, "priority": priority}
    body["timeout"] = timeout
    _show_tasks(ctx, [state(ctx).api().call("POST", "/tasks", json=body)])


@tasks.command("cancel")
def cancel(ctx: typer.Context, id: int) -> None:
    """Cancel an open task."""
    _show_tasks(ctx, [state(ctx).api().call("POST", f"/tasks/{id}/cancel")])


@tasks.command("retry")
def retry(ctx: typer.Context, id: int) -> None:
    """Queue a copy of a failed or cancelled task."""
    _show_tasks(ctx, [state(ctx).api().call("POST", f"/tasks/{id}/retry")])


@farm.command("apply")
def apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="YAML farm file: racks, beds, printers")],
    prune: Annotated[bool, typer.Option(help="remove records the file does not list")] = False,
) -> None:
    """Make the farm's racks, beds and printers match a farm file (idempotent)."""
    try:
        spec = parse_farm_file(file.read_text(), str(file))
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}", 2) from None
    except FileInvalid as exc:
        raise CliError(str(exc), 2) from None
    body = {**spec.model_dump(), "prune": prune}
    result = state(ctx).api().call("PUT", "/farm", json=body)
    if state(ctx).json:
        emit_json(result)
        return
    outcomes: dict[str, str] = result["outcomes"]
    for record, outcome in outcomes.items():
        if outcome not in ("unchanged", "created"):
            out.print(f"{record}: {outcome}")
    counts = Counter(outcome.split(":")[0] for outcome in outcomes.values())
    summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
    out.print(f"{file}: {summary or 'nothing listed'}")


@farm.command("printers")
def printers(ctx: typer.Context) -> None:
    """List printers."""
    found = state(ctx).api().call("GET", "/farm/printers")
    if state(ctx).json:
        emit_json(found)
        return
    rows = [
        [
            p["id"],
            p["state"],
            p["bed_type"],
            p["bed"] or "-",
            p["door"] or "-",
            f"{p['position']:g}",
        ]
        for p in found
    ]
    table(["PRINTER", "STATE", "BED TYPE", "BED", "DOOR", "POSITION"], rows, "no printers")


@farm.command("printer")
def printer(
    ctx: typer.Context,
    id: str,
    bed_type: Annotated[str, typer.Option(help="the bed type it takes")],
    door: Annotated[str, typer.Option(help="the door the arm opens")] = "",
    position: Annotated[float, typer.Option(help="place along the arm's reach")] = 0.0,
    bed: Annotated[str | None, typer.Option(help="the bed in it now")] = None,
) -> None:
    """Add or change a printer."""
    body: dict[str, Any] = {"bed_type": bed_type, "door": door, "position": position}
    if bed is not None:  # without --bed the bed in it stays as it is
        body["bed"] = bed
    found = state(ctx).api().call("PUT", f"/farm/printers/{path_part(id)}", json=body)
    emit_json(found) if state(ctx).json else out.print(f"printer {id}: {found['state']}")


@farm.command("state")
def printer_state(ctx: typer.Context, id: str, new: str) -> None:
    """Report a printer's state: idle, printing, finished, error."""
    found = (
        state(ctx).api().call("PUT", f"/farm/printers/{path_part(id)}/state", json={"state": new})
    )
    emit_json(found) if state(ctx).json else out.print(f"printer {id}: {found['state']}")


@farm.command("ready")
def ready(ctx: typer.Context, id: str) -> None:
    """Tell corral a printer finished (as a `ready` message would)."""
    state(ctx).api().call("POST", "/triggers/farm-ready/fire", content=id)
    out.print(f"printer {id}: ready sent")


@farm.command("beds")
def beds(ctx: typer.Context) -> None:
    """List beds and where they are."""
    found = state(ctx).api().call("GET", "/farm/beds")
    if state(ctx).json:
        emit_json(found)
        return
    rows = [
        [
            b["id"],
            b["type"],
            b["state"],
            f"printer {b['printer']}" if b["printer"] else f"{b['rack']}/{b['slot']}"
            if b["rack"] else "-",
            b["reserved_for"] or "-",
        ]
        for b in found
    ]  # fmt: skip
    table(["BED", "TYPE", "STATE", "WHERE", "RESERVED FOR"], rows, "no beds")


@farm.command("bed")
def bed(
    ctx: typer.Context,
    id: str,
    type: Annotated[str, typer.Option(help="bed type")],
    rack: Annotated[str | None, typer.Option(help="rack it sits in")] = None,
    slot: Annotated[int | None, typer.Option(help="slot in the rack")] = None,
    state_: Annotated[str, typer.Option("--state", help="clean, with_part, dirty")] = "clean",
) -> None:
    """Add or change a bed."""
    body = {"type": type, "rack": rack, "slot": slot, "state": state_}
    found = state(ctx).api().call("PUT", f"/farm/beds/{path_part(id)}", json=body)
    emit_json(found) if state(ctx).json else out.print(f"bed {id}: {found['state']}")


@farm.command("rack")
def rack(
    ctx: typer.Context,
    id: str,
    position: Annotated[float, typer.Option(help="place along the arm's reach")] = 0.0,
    slots: Annotated[int, typer.Option(help="number of slots")] = 10,
) -> None:
    """Add or change a rack."""
    body = {"position": position, "slots": slots}
    found = state(ctx).api().call("PUT", f"/farm/racks/{path_part(id)}", json=body)
    emit_json(found) if state(ctx).json else out.print(f"rack {id}: {found['slots']} slots")


@farm.command("usage")
def usage(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option("--from", help="ISO time [a day ago]")] = None,
    until: Annotated[str | None, typer.Option("--to", help="ISO time [now]")] = None,
) -> None:
    """Each printer's busy (printing) and idle time over an interval."""
    params = {k: v for k, v in (("from", since), ("to", until)) if v}
    found = state(ctx).api().call("GET", "/farm/utilization", params=params)
    if state(ctx).json:
        emit_json(found)
        return
    rows = [
        [u["printer"], f"{u['busy_s']:.0f}", f"{u['idle_s']:.0f}", f"{100 * u['utilization']:.1f}%"]
        for u in found
    ]
    table(["PRINTER", "BUSY S", "IDLE S", "UTILIZATION"], rows, "no printers")


@farm.command("arm")
def arm(ctx: typer.Context) -> None:
    """The arm's last status, its job in flight, the queue, and what it waits for."""
    found = state(ctx).api().call("GET", "/farm/arm")
    if state(ctx).json:
        emit_json(found)
        return
    doing = f"task {found['in_flight']}" if found["in_flight"] else "nothing"
    out.print(f"{found['name']}: {found['status']}, doing {doing}, {found['queued']} queued")
    if found.get("blocked"):
        out.print(f"blocked: {found['blocked']}")


@brokers.command("ls")
def list_brokers(ctx: typer.Context) -> None:
    """Broker connections: up or not, since when, last error."""
    found = state(ctx).api().call("GET", "/brokers")
    if state(ctx).json:
        emit_json(found)
        return
    rows = [
        [b["name"], b["kind"], b["url"], "up" if b["connected"] else "DOWN", ago(b["since"]),
         str(b["reconnects"]), b["last_error"]]
        for b in found
    ]  # fmt: skip
    table(
        ["BROKER", "KIND", "URL", "STATE", "SINCE", "RECONNECTS", "LAST ERROR"],
        rows,
        "no brokers (declare them under `brokers:` in corral.yaml)",
    )


@triggers.command("ls")
def list_triggers(ctx: typer.Context) -> None:
    """Trigger rules and how often they fired."""
    found = state(ctx).api().call("GET", "/triggers")
    if state(ctx).json:
        emit_json(found)
        return
    rows = [
        [
            t["name"],
            t["source"],
            t["action"],
            str(t["fired"]),
            ago(t["last_fired"]),
            t["last_error"],
        ]
        for t in found
    ]
    table(["TRIGGER", "SOURCE", "ACTION", "FIRED", "LAST", "LAST ERROR"], rows, "no triggers")


@triggers.command("fire")
def fire(ctx: typer.Context, name: str, body: str = "") -> None:
    """Fire a trigger by hand with a text body."""
    found = state(ctx).api().call("POST", f"/triggers/{path_part(name)}/fire", content=body)
    emit_json(found) if state(ctx).json else out.print(f"trigger {name} fired ({found['fired']})")
