"""Import of a Wasm-IoT `init/` folder at start: devices, modules (binaries and data files
from `files/`) and deployment manifests. `corral wasm export` writes the same layout.

Layout: device/*.json `{name, communication: {addresses, port}}`; module/*.json `{name,
wasm: <file in files/>, functions?, dataFiles?: {mount: <file>}}`; deployment/*.json
`{name, sequence}`. Called by Core.start when `init_dir` is set.
"""

import json
from pathlib import Path
from typing import Any

import structlog

from corral.control.deployments import DeploymentService
from corral.control.devices import DeviceService
from corral.control.modules import ModuleService
from corral.errors import CorralError, Invalid

log = structlog.get_logger("corral.wasm_init")


def _documents(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise Invalid(f"{path}: not readable JSON: {exc}") from None
        if not isinstance(data, dict):
            raise Invalid(f"{path}: expected a JSON object")
        out.append((path, data))
    return out


def _file(files: Path, ref: Any, where: Path) -> bytes:
    name = ref.get("fileName") or ref.get("originalFilename") if isinstance(ref, dict) else ref
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise Invalid(f"{where}: a file reference must be a plain name in files/, not {ref!r}")
    try:
        return (files / name).read_bytes()
    except OSError as exc:
        raise Invalid(f"{where}: cannot read files/{name}: {exc.strerror}") from None


async def import_folder(
    devices: DeviceService,
    modules: ModuleService,
    deployments: DeploymentService,
    folder: Path,
) -> tuple[dict[str, int], list[str]]:
    """Apply the folder; a bad file stops the import with its name. Returns the counts and
    the deployments to deploy: the caller deploys them once corral serves, since each
    device downloads its modules from corral."""
    if not folder.is_dir():  # noqa: ASYNC240 - once, at start
        raise Invalid(f"init_dir {folder} is not a folder")
    files = folder / "files"
    counts = {"devices": 0, "modules": 0, "deployments": 0}
    to_deploy: list[str] = []
    for path, doc in _documents(folder / "device"):
        comm = doc.get("communication") or {}
        addresses = comm.get("addresses") or []
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise Invalid(f"{path}: communication.addresses must be a list of addresses")
        await devices.register(
            str(doc.get("name", "")), addresses, int(comm.get("port", 5000)), "init"
        )
        counts["devices"] += 1
    for path, doc in _documents(folder / "module"):
        binary = _file(files, doc.get("wasm"), path)
        row, _ = await modules.upload(str(doc.get("name", "")), str(path), binary)
        data_files = doc.get("dataFiles") or {}
        if not isinstance(data_files, dict):
            raise Invalid(f"{path}: dataFiles must map mount names to files")
        attached = {
            mount: ("application/octet-stream", _file(files, ref, path))
            for mount, ref in data_files.items()
        }
        functions = doc.get("functions") or {}
        if functions or attached:
            await modules.describe(row.id, functions, attached)
        counts["modules"] += 1
    for path, doc in _documents(folder / "deployment"):
        manifest = {"name": doc.get("name"), "sequence": doc.get("sequence")}
        try:
            deployment, _ = await deployments.create(manifest)
        except CorralError as exc:
            log.warning("init deployment not placed", file=str(path), error=exc.message)
            continue
        counts["deployments"] += 1
        if doc.get("deploy"):
            to_deploy.append(deployment.id)
    return counts, to_deploy
