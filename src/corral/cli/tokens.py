"""`corral token ...` and `corral whoami`: issue, list and revoke API tokens.

Issuing and listing need an admin token; the new secret is printed once.
"""

import re
from typing import Annotated

import typer

from corral.cli.context import state
from corral.cli.output import ago, emit_json, out, table
from corral.exits import CliError

app = typer.Typer(help="API tokens and their roles.", no_args_is_help=True)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """`90s`, `15m`, `12h`, `30d`, `2w` -> seconds; CliError when malformed."""
    match = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if not match:
        raise CliError(f"duration {text!r} must look like 30m, 12h, 30d or 2w", 2)
    return int(match.group(1)) * UNITS[match.group(2)]


@app.command("create")
def create(
    ctx: typer.Context,
    name: str,
    role: Annotated[str, typer.Option(help="admin, operator, viewer, robot or device")],
    expires: Annotated[str | None, typer.Option(help="lifetime, e.g. 30d")] = None,
) -> None:
    """Issue a token; its secret is shown now and never again."""
    body: dict[str, object] = {"name": name, "role": role}
    if expires:
        body["expires_in_seconds"] = parse_duration(expires)
    issued = state(ctx).api().call("POST", "/tokens", json=body)
    if state(ctx).json:
        emit_json(issued)
        return
    out.print(issued["token"])
    info = issued["info"]
    typer.echo(
        f"token {info['id']} ({info['role']}); store it now, it is not shown again", err=True
    )


@app.command("ls")
def list_tokens(ctx: typer.Context) -> None:
    """List tokens (never their secrets)."""
    tokens = state(ctx).api().call("GET", "/tokens")
    if state(ctx).json:
        emit_json(tokens)
        return
    rows = [
        [
            str(t["id"]),
            t["name"],
            t["role"],
            t["prefix"] + "...",
            "active" if t["active"] else ("revoked" if t["revoked_at"] else "expired"),
            t["expires_at"] or "never",
            ago(t["last_used_at"]) if t["last_used_at"] else "never",
        ]
        for t in tokens
    ]
    table(["ID", "NAME", "ROLE", "PREFIX", "STATE", "EXPIRES", "LAST USED"], rows, "no tokens")


@app.command("revoke")
def revoke(ctx: typer.Context, token_id: int) -> None:
    """Revoke a token at once."""
    result = state(ctx).api().call("DELETE", f"/tokens/{token_id}")
    if state(ctx).json:
        emit_json(result)
    else:
        out.print(f"token {token_id} ({result['name']}) revoked")
