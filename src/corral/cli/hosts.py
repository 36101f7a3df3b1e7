"""`corral host ...`: add, list, inspect, label, refresh, remove and apply hosts files.

Each command is one call to the REST API (`/hosts`).
"""

from pathlib import Path
from typing import Annotated, Any

import typer

from corral.cli.context import state
from corral.cli.output import ago, emit_json, labels, out, size, table
from corral.exits import CliError
from corral.model.hostsfile import parse_hosts_file
from corral.model.names import parse_label_args
from corral.model.yamlfile import FileInvalid

app = typer.Typer(help="Docker engines corral manages.", no_args_is_help=True)


def _state_text(host: dict[str, Any]) -> str:
    if host["reachable"] is None:
        return "unknown"
    word = "reachable" if host["reachable"] else "unreachable"
    return f"{word} ({ago(host['state_since'])})"


def _row(host: dict[str, Any]) -> list[str]:
    facts = host.get("facts") or {}
    containers = f"{facts['containers_running']}/{facts['containers_total']}" if facts else "-"
    return [
        host["name"],
        host["url"],
        _state_text(host),
        facts.get("engine_version", "-"),
        str(facts.get("cpus", "-")),
        size(facts.get("memory_bytes")),
        containers,
        facts.get("swarm_role", "-"),
        labels(host["labels"]),
    ]


HEADERS = ["NAME", "URL", "STATE", "ENGINE", "CPUS", "MEMORY", "CONTAINERS", "SWARM", "LABELS"]


def _show(ctx: typer.Context, host: dict[str, Any]) -> None:
    if state(ctx).json:
        emit_json(host)
        return
    table(HEADERS, [_row(host)], "")
    if host["reachable"] is False and host["last_error"]:
        out.print(f"[yellow]warning:[/] {host['name']} does not answer: {host['last_error']}")


@app.command("add")
def add(
    ctx: typer.Context,
    name: str,
    url: Annotated[str, typer.Argument(help="unix:///path, tcp://host:port or ssh://user@host")],
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="key=value")] = None,
    tls_ca: Annotated[str | None, typer.Option(help="CA certificate for tcp:// with TLS")] = None,
    tls_cert: Annotated[str | None, typer.Option(help="client certificate")] = None,
    tls_key: Annotated[str | None, typer.Option(help="client key")] = None,
    ssh_identity: Annotated[
        str | None, typer.Option(help="ssh:// private key file (on the corral server)")
    ] = None,
    ssh_socket: Annotated[
        str | None, typer.Option(help="ssh:// remote Docker socket [/var/run/docker.sock]")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(help="accept plain tcp:// off this machine (unencrypted, unauthenticated)"),
    ] = False,
) -> None:
    """Register a Docker engine as a host."""
    try:
        host_labels = parse_label_args(label or [])
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    body: dict[str, Any] = {"name": name, "url": url, "labels": host_labels}
    if insecure:
        body["insecure"] = True
    if ssh_identity or ssh_socket:
        body["ssh"] = {k: v for k, v in (("identity", ssh_identity), ("socket", ssh_socket)) if v}
    tls = [tls_ca, tls_cert, tls_key]
    if any(tls):
        if not all(tls):
            raise CliError("TLS needs all of --tls-ca, --tls-cert and --tls-key", 2)
        body["tls"] = {"ca": tls_ca, "cert": tls_cert, "key": tls_key}
    _show(ctx, state(ctx).api().call("POST", "/hosts", json=body))


@app.command("ls")
def list_hosts(ctx: typer.Context) -> None:
    """List hosts with their reachability and resources."""
    hosts = state(ctx).api().call("GET", "/hosts")
    if state(ctx).json:
        emit_json(hosts)
        return
    table(HEADERS, [_row(h) for h in hosts], "no hosts (add one with `corral host add`)")


@app.command("inspect")
def inspect(ctx: typer.Context, name: str) -> None:
    """Everything corral knows about one host, as JSON."""
    emit_json(state(ctx).api().call("GET", f"/hosts/{name}"))


@app.command("label")
def label(
    ctx: typer.Context,
    name: str,
    changes: Annotated[list[str], typer.Argument(help="key=value sets a label, key- removes it")],
) -> None:
    """Change the labels of a registered host (placement uses them at the next pass)."""
    body: dict[str, str | None] = {}
    for item in changes:
        if "=" not in item and item.endswith("-") and len(item) > 1:
            body[item[:-1]] = None
            continue
        try:
            body.update(parse_label_args([item]))
        except ValueError as exc:
            raise CliError(f"{exc} (or key- to remove it)", 2) from None
    _show(ctx, state(ctx).api().call("PATCH", f"/hosts/{name}/labels", json=body))


@app.command("refresh")
def refresh(ctx: typer.Context, name: str) -> None:
    """Check a host now instead of waiting for the next periodic check."""
    _show(ctx, state(ctx).api().call("POST", f"/hosts/{name}/refresh"))


@app.command("rm")
def remove(ctx: typer.Context, name: str) -> None:
    """Forget a host (its containers are left running)."""
    state(ctx).api().call("DELETE", f"/hosts/{name}")
    if not state(ctx).json:
        out.print(f"host {name} removed")


@app.command("apply")
def apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="YAML hosts file")],
    prune: Annotated[bool, typer.Option(help="remove hosts the file does not list")] = False,
) -> None:
    """Make corral's hosts match a hosts file (idempotent)."""
    try:
        specs = parse_hosts_file(file.read_text(), str(file))
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}", 2) from None
    except FileInvalid as exc:
        raise CliError(str(exc), 2) from None
    body = {"hosts": [s.model_dump(exclude_none=True) for s in specs], "prune": prune}
    result = state(ctx).api().call("PUT", "/hosts", json=body)
    if state(ctx).json:
        emit_json(result)
        return
    for name, outcome in sorted(result["outcomes"].items()):
        out.print(f"{name}: {outcome}")
