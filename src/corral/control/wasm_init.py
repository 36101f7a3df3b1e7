"""Import of a Wasm-IoT `init/` folder at start: devices, modules (binaries and data files
from `files/`) and deployment manifests. `corral wasm export` writes the same layout.

Each file holds one document or an array of them: the orchestrator's own exports (`curl
/file/device > init/device/devices.json`, MongoDB documents with `_id`) import unchanged.
Layout: device/*.json `{name, communication: {addresses, port}, description?}`;
module/*.json `{name, wasm: <file in files/ or {originalFilename, fileName}>, functions?
or description? (OpenAPI) with mounts?, dataFiles?: {mount: <file>}}`; deployment/*.json
`{name, sequence, deploy?}`, whose steps may name devices and modules by the exported
`_id`. Called by Core.start when `init_dir` is set.
"""

import json
from pathlib import Path
from typing import Any

import structlog

from corral.control.deployments import DeploymentService
from corral.control.devices import DeviceService
from corral.control.modules import ModuleService
from corral.errors import CorralError, Invalid
from corral.model.manifests import STEP_KEYS
from corral.model.wasm_modules import functions_from_openapi

log = structlog.get_logger("corral.wasm_init")


def _documents(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise Invalid(f"{path}: not readable JSON: {exc}") from None
        documents = data if isinstance(data, list) else [data]
        for index, doc in enumerate(documents):
            if not isinstance(doc, dict):
                where = f"{path}[{index}]" if isinstance(data, list) else str(path)
                raise Invalid(f"{where}: expected a JSON object")
            out.append((path, doc))
    return out


def _exported_id(doc: dict[str, Any]) -> str | None:
    """The `_id` of an exported document: a string, or MongoDB's `{"$oid": ...}`."""
    value = doc.get("_id")
    if isinstance(value, dict):
        value = value.get("$oid")
    return value if isinstance(value, str) and value else None


def _file(files: Path, ref: Any, where: Path) -> bytes:
    """A file of files/: a plain name, or the orchestrator's `{originalFilename, fileName}`
    (the first of them that is in files/)."""
    names = [ref.get("originalFilename"), ref.get("fileName")] if isinstance(ref, dict) else [ref]
    plain = [n for n in names if isinstance(n, str) and n and "/" not in n and n[0] != "."]
    if not plain:
        raise Invalid(f"{where}: a file reference must be a plain name in files/, not {ref!r}")
    found = next((n for n in plain if (files / n).is_file()), plain[0])
    try:
        return (files / found).read_bytes()
    except OSError as exc:
        raise Invalid(f"{where}: cannot read files/{found}: {exc.strerror}") from None


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
    device_names: dict[str, str] = {}  # exported _id -> name
    for path, doc in _documents(folder / "device"):
        comm = doc.get("communication") or {}
        addresses = comm.get("addresses") or []
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise Invalid(f"{path}: communication.addresses must be a list of addresses")
        device = await devices.register(
            str(doc.get("name", "")), addresses, int(comm.get("port", 5000)), "init"
        )
        if device.description is None and isinstance(doc.get("description"), dict):
            await devices.set_description(device.name, doc["description"])
        device_names[_exported_id(doc) or device.name] = device.name
        counts["devices"] += 1
    module_ids: dict[str, str] = {}  # exported _id -> corral's id
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
        functions = doc.get("functions")
        if not functions and isinstance(doc.get("description"), dict):
            exported = {e["name"] for e in row.exports}
            functions = functions_from_openapi(doc["description"], doc.get("mounts"), exported)
        if functions or attached:
            await modules.describe(row.id, functions or {}, attached)
        module_ids[_exported_id(doc) or row.id] = row.id
        counts["modules"] += 1
    for path, doc in _documents(folder / "deployment"):
        sequence = doc.get("sequence")
        if isinstance(sequence, list):
            sequence = [_step(s, device_names, module_ids) for s in sequence]
        manifest = {"name": doc.get("name"), "sequence": sequence}
        try:
            deployment, _ = await deployments.create(manifest)
        except CorralError as exc:
            log.warning("init deployment not placed", file=str(path), error=exc.message)
            continue
        counts["deployments"] += 1
        if doc.get("deploy"):
            to_deploy.append(deployment.id)
    return counts, to_deploy


def _step(step: Any, device_names: dict[str, str], module_ids: dict[str, str]) -> Any:
    """A step of an exported manifest: its known keys, with exported ids mapped."""
    if not isinstance(step, dict):
        return step
    out = {k: v for k, v in step.items() if k in STEP_KEYS}
    if isinstance(out.get("device"), str):
        out["device"] = device_names.get(out["device"], out["device"])
    if isinstance(out.get("module"), str):
        out["module"] = module_ids.get(out["module"], out["module"])
    return out
