"""`corral device …`, `corral module …`, `corral deployment …`, `corral wasm export`: Wasm
devices, the module package manager and deployments from a shell, over the Wasm-IoT API.

Manifests are YAML or JSON files `{name, sequence: [{device?, module, func}]}`.
"""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from corral.cli.client import path_part
from corral.cli.context import state
from corral.cli.output import emit_json, out, size, table
from corral.exits import CliError

devices = typer.Typer(help="Wasm devices (supervisors).", no_args_is_help=True)
modules = typer.Typer(help="WebAssembly modules: the package manager.", no_args_is_help=True)
deployments = typer.Typer(help="Deployments of module functions on devices.", no_args_is_help=True)
wasm = typer.Typer(help="Wasm-IoT data: export to an init/ folder.", no_args_is_help=True)


# ----------------------------------------------------------------------------- devices


@devices.command("ls")
def list_devices(ctx: typer.Context) -> None:
    """List devices with status and health."""
    found = state(ctx).api().call("GET", "/file/device")
    if state(ctx).json:
        emit_json(found)
        return
    rows = []
    for d in found:
        report = (d.get("health") or {}).get("report") or {}
        interfaces = (d.get("description") or {}).get("supervisorInterfaces") or []
        status = d["status"] + (" (blacklisted)" if d["blacklisted"] else "")
        cpu = report.get("cpuUsage")
        rows.append(
            [
                d["name"],
                d["url"],
                status,
                d["source"],
                f"{cpu:.0%}" if isinstance(cpu, int | float) else "-",
                ",".join(i for i in interfaces if i != "wasi_snapshot_preview1") or "-",
            ]
        )
    table(["NAME", "URL", "STATUS", "FOUND BY", "CPU", "INTERFACES"], rows, "no devices")


@devices.command("show")
def show_device(ctx: typer.Context, name: str) -> None:
    """A device's description, health and status log."""
    emit_json(state(ctx).api().call("GET", f"/file/device/{path_part(name)}"))


@devices.command("add")
def add_device(
    ctx: typer.Context,
    name: str,
    address: Annotated[str, typer.Argument(help="HOST:PORT of its supervisor")],
) -> None:
    """Add a device by hand (as if it had registered itself)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise CliError(f"address {address!r} must be HOST:PORT", 2)
    body = {"name": name, "addresses": [host], "port": int(port)}
    state(ctx).api().call("POST", "/file/device/discovery/register", json=body)
    out.print(f"device {name} added at {host}:{port}")


@devices.command("rm")
def remove_device(ctx: typer.Context, name: str) -> None:
    """Forget a device (mDNS finds it again if it still advertises)."""
    state(ctx).api().call("DELETE", f"/file/device/{path_part(name)}")
    out.print(f"device {name} removed")


@devices.command("blacklist")
def blacklist(ctx: typer.Context, name: str) -> None:
    """Keep new deployments and failovers off a device."""
    state(ctx).api().call("POST", f"/file/device/{path_part(name)}/blacklist")
    out.print(f"device {name} blacklisted")


@devices.command("unblacklist")
def unblacklist(ctx: typer.Context, name: str) -> None:
    """Allow a blacklisted device again."""
    state(ctx).api().call("POST", f"/file/device/{path_part(name)}/unblacklist")
    out.print(f"device {name} allowed again")


@devices.command("token")
def device_token(ctx: typer.Context, name: str) -> None:
    """Issue the device's credential (shown once): give it to `corral agent --token`."""
    issued = state(ctx).api().call("POST", "/tokens", json={"name": name, "role": "device"})
    if state(ctx).json:
        emit_json(issued)
        return
    out.print(f"device token for {name} (shown once):")
    out.print(issued["token"])


# ----------------------------------------------------------------------------- modules


@modules.command("push")
def push(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="the .wasm file")],
    name: Annotated[str | None, typer.Option(help="module name; default: the file's stem")] = None,
    describe: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="YAML/JSON {func: {method, parameters}}"),
    ] = None,
    data: Annotated[
        list[str] | None, typer.Option("--data", help="MOUNT=FILE data file (repeatable)")
    ] = None,
) -> None:
    """Upload a module (a new version when its content changed), then describe it."""
    api = state(ctx).api()
    module = name or file.stem
    with file.open("rb") as handle:
        answer = api.call(
            "POST",
            "/file/module",
            data={"name": module},
            files={"module": (file.name, handle, "application/wasm")},
        )
    what = "uploaded" if answer.get("created") else "unchanged"
    result: dict[str, Any] = {"id": answer["id"], "name": module, "outcome": what}
    if describe is not None or data:
        functions = _load(describe) if describe is not None else {}
        files: dict[str, Any] = _mount_files(data, "--data")
        files["functions"] = (None, json.dumps(functions))
        answer = api.call("POST", f"/file/module/{answer['id']}/upload", files=files)
        result["functions"] = sorted(
            path.rsplit("/", 1)[-1] for path in answer["description"]["paths"]
        )
    if state(ctx).json:
        emit_json(result)
    else:
        out.print(f"module {module} {what}: {result['id']}")


def _load(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: not valid YAML/JSON: {exc}", 2) from None


@modules.command("ls")
def list_modules(ctx: typer.Context) -> None:
    """List module versions."""
    found = state(ctx).api().call("GET", "/file/module")
    if state(ctx).json:
        emit_json(found)
        return
    rows = [
        [
            m["_id"],
            m["name"],
            m["wasm"]["sha256"][:12],
            size(m["wasm"]["size"]),
            ",".join(e["name"] for e in m["exports"]) or "-",
            ",".join(f"{r['module']}.{r['name']}" for r in m["requirements"]) or "-",
        ]
        for m in found
    ]
    table(["ID", "NAME", "SHA256", "SIZE", "EXPORTS", "IMPORTS"], rows, "no modules")


@modules.command("describe")
def describe_module(ctx: typer.Context, module: str) -> None:
    """A module's functions as an OpenAPI document."""
    emit_json(state(ctx).api().call("GET", f"/file/module/{path_part(module)}/description"))


@modules.command("rm")
def remove_module(ctx: typer.Context, module: str) -> None:
    """Delete a module (a name: every version) unless a deployment uses it."""
    state(ctx).api().call("DELETE", f"/file/module/{path_part(module)}")
    out.print(f"module {module} deleted")


def _mount_files(items: list[str] | None, option: str) -> dict[str, tuple[str, bytes, str]]:
    """`MOUNT=FILE` options as multipart files named after their mounts."""
    files: dict[str, tuple[str, bytes, str]] = {}
    for item in items or []:
        mount, _, path = item.partition("=")
        if not mount or not path or not Path(path).is_file():
            raise CliError(f"{option} {item!r} must be MOUNT=FILE with an existing file", 2)
        files[mount] = (Path(path).name, Path(path).read_bytes(), "application/octet-stream")
    return files


# ----------------------------------------------------------------------------- deployments


@deployments.command("create")
def create(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="manifest file")],
    deploy: Annotated[bool, typer.Option(help="send each device its part now")] = True,
) -> None:
    """Create a deployment from a manifest, and deploy it."""
    api = state(ctx).api()
    deployment_id = api.call("POST", "/file/manifest", json=_load(file))
    if not deploy:
        out.print(f"deployment {deployment_id} created")
        return
    answer = api.call("POST", f"/file/manifest/{deployment_id}")
    if state(ctx).json:
        emit_json({"id": deployment_id, **answer})
        return
    for device, said in sorted(answer["deviceResponses"].items()):
        out.print(f"  {device}: {said['status']}")
    out.print(f"deployment {deployment_id} {answer['state']}")


@deployments.command("ls")
def list_deployments(ctx: typer.Context) -> None:
    """List deployments and where their steps run."""
    found = state(ctx).api().call("GET", "/file/manifest")
    if state(ctx).json:
        emit_json(found)
        return
    rows = [
        [
            d["_id"],
            d["name"],
            d["state"],
            " -> ".join(f"{s['module_name']}.{s['func']}@{s['device']}" for s in d["steps"]),
        ]
        for d in found
    ]
    table(["ID", "NAME", "STATE", "CHAIN"], rows, "no deployments")


@deployments.command("show")
def show(ctx: typer.Context, deployment: str) -> None:
    """A deployment with each device's part and answer."""
    emit_json(state(ctx).api().call("GET", f"/file/manifest/{path_part(deployment)}"))


@deployments.command("run")
def run(
    ctx: typer.Context,
    deployment: str,
    param: Annotated[
        list[str] | None, typer.Option("-p", "--param", help="NAME=VALUE (repeatable)")
    ] = None,
    file: Annotated[
        list[str] | None,
        typer.Option("-f", "--file", help="MOUNT=PATH: an execution file (repeatable)"),
    ] = None,
) -> None:
    """Run the chain and print its result (and the URLs of its output files)."""
    params: dict[str, str] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"-p {item!r} must be NAME=VALUE", 2)
        params[key] = value
    files = _mount_files(file, "-f")
    path = f"/execute/{path_part(deployment)}"
    api = state(ctx).api()
    answer = (
        api.call("POST", path, data=params, files=files)
        if files
        else api.call("POST", path, json=params)
    )
    if state(ctx).json:
        emit_json(answer)
        return
    result = answer["result"]
    value = result[0] if isinstance(result, list) and result else result
    note = " (failover)" if answer.get("isInFailover") else ""
    out.print(f"{value}{note}")
    outputs = result[1] if isinstance(result, list) and len(result) > 1 else None
    for url in outputs or []:
        out.print(f"  output file: {url}")


@deployments.command("rm")
def remove(ctx: typer.Context, deployment: str) -> None:
    """Undeploy from every device and remove the deployment."""
    state(ctx).api().call("DELETE", f"/file/manifest/{path_part(deployment)}")
    out.print(f"deployment {deployment} removed")


# ----------------------------------------------------------------------------- export


@wasm.command("export")
def export(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(file_okay=False, help="the init/ folder to write")],
) -> None:
    """Write devices, modules (with binaries and data files) and manifests as an init/
    folder that `init_dir` imports."""
    api = state(ctx).api()
    for sub in ("device", "module", "deployment", "files"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    found = api.call("GET", "/file/device")
    for d in found:
        doc = {"name": d["name"], "communication": d["communication"]}
        (folder / "device" / f"{d['name']}.json").write_text(json.dumps(doc, indent=2))
    newest: dict[str, dict[str, Any]] = {m["name"]: m for m in api.call("GET", "/file/module")}
    for m in newest.values():
        binary = api.download(f"/file/module/{m['_id']}/wasm")
        (folder / "files" / f"{m['name']}.wasm").write_bytes(binary)
        data_files = {}
        for file in m["dataFiles"]:
            stored = f"{m['name']}.{file}"
            (folder / "files" / stored).write_bytes(api.download(f"/file/module/{m['_id']}/{file}"))
            data_files[file] = stored
        doc = {
            "name": m["name"],
            "wasm": f"{m['name']}.wasm",
            "functions": m["functions"],
            "dataFiles": data_files,
        }
        (folder / "module" / f"{m['name']}.json").write_text(json.dumps(doc, indent=2))
    manifests = api.call("GET", "/file/manifest")
    for d in manifests:
        doc = {"name": d["name"], "sequence": d["sequence"], "deploy": d["state"] == "deployed"}
        (folder / "deployment" / f"{d['name']}.json").write_text(json.dumps(doc, indent=2))
    out.print(
        f"exported {len(found)} device(s), {len(newest)} module(s), "
        f"{len(manifests)} deployment(s) to {folder}"
    )
