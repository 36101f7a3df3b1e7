"""`corral events [-f]`: read the event history, or follow it live.

Following reconnects by itself after a dropped connection, resuming from the last event.
"""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from corral.cli.context import state
from corral.cli.output import emit_json, out, parse_time
from corral.cli.tokens import parse_duration
from corral.exits import CliError


def _since(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        moment = parse_time(value)
    except ValueError:
        moment = datetime.now(UTC) - timedelta(seconds=parse_duration(value))
    return moment.isoformat() if moment else None


def _line(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(event)
        return
    moment = parse_time(event["time"])
    stamp = moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "?"
    out.print(f"{stamp}  {event['kind']:<22} {event['resource']:<20} {event['message']}")


def events(
    ctx: typer.Context,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new events")
    ] = False,
    kind: Annotated[str | None, typer.Option(help="kind, or prefix ending in *")] = None,
    resource: Annotated[str | None, typer.Option(help="resource, or prefix ending in *")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time or a duration like 10m")] = None,
    limit: Annotated[int, typer.Option("-n", help="how many past events")] = 50,
) -> None:
    """Show recent events; with -f, follow new ones as they happen."""
    cli = state(ctx)
    api = cli.api()
    params: dict[str, Any] = {"limit": limit, "newest_first": True}
    for key, value in (("kind", kind), ("resource", resource), ("since", _since(since))):
        if value:
            params[key] = value
    if limit < 0:
        raise CliError("-n must be 0 or more", 2)
    past = list(reversed(api.call("GET", "/events", params=params))) if limit else []
    for event in past:
        _line(event, cli.json)
    if not follow:
        return
    last = past[-1]["id"] if past else None
    live = {k: v for k, v in (("kind", kind), ("resource", resource)) if v}

    def printed(event: dict[str, Any]) -> None:
        nonlocal last
        _line(event, cli.json)
        last = event["id"]

    api.follow("/events/stream", live, printed, lambda: last)  # resumes after the last
