"""Files of one function call: a folder of its own, preopened as `/`, holding the
deployment's files and the execution files sent with the call; its output files kept after.

Used by the agent's server for functions whose mounts list execution or output files.
"""

import hashlib
import shutil
import tempfile
from pathlib import Path

from corral.agent.deployments import FunctionMounts

MAX_INPUT_BYTES = 64 * 2**20  # all the execution files of one call together


class InputInvalid(Exception):
    """The files sent with a call do not match the function's execution mounts."""


def check_inputs(mounts: FunctionMounts | None, files: dict[str, bytes], where: str) -> None:
    """Every execution mount sent, nothing else; InputInvalid names what is wrong."""
    wanted = {m.path for m in mounts.execution} if mounts is not None else set()
    unknown = sorted(set(files) - wanted)
    if unknown:
        expected = ", ".join(sorted(wanted)) or "none"
        raise InputInvalid(
            f"{where} takes no file {unknown[0]!r} (its execution files: {expected})"
        )
    missing = sorted(wanted - set(files))
    if missing:
        raise InputInvalid(f"{where} needs the execution file {missing[0]!r} (multipart)")
    if sum(len(data) for data in files.values()) > MAX_INPUT_BYTES:
        raise InputInvalid(f"the files sent with a call may hold {MAX_INPUT_BYTES} bytes at most")


def prepare(
    root: Path, deployment_files: Path, mounts: FunctionMounts, inputs: dict[str, bytes]
) -> Path:
    """A fresh folder with the deployment files the function mounts and its inputs."""
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="call-", dir=root))
    for mount in mounts.deployment:
        source = deployment_files / mount.path
        if source.is_file():
            shutil.copyfile(source, folder / mount.path)
    for name, data in inputs.items():
        (folder / name).write_bytes(data)
    return folder


def keep_outputs(folder: Path, mounts: FunctionMounts, results: Path, request_id: str) -> list[str]:
    """Move the output files the call made to the request's result folder (the names of
    those it made, in the mounts' order), then remove the call's folder."""
    kept: list[str] = []
    try:
        target = result_folder(results, request_id)
        for mount in mounts.output:
            made = folder / mount.path
            if made.is_file():
                target.mkdir(parents=True, exist_ok=True)
                shutil.move(made, target / mount.path)
                kept.append(mount.path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return kept


def result_folder(results: Path, request_id: str) -> Path:
    return results / hashlib.sha256(request_id.encode()).hexdigest()[:24]


def output_file(results: Path, request_id: str, name: str) -> Path | None:
    path = result_folder(results, request_id) / name
    if "/" in name or name.startswith(".") or not path.is_file():
        return None
    return path


def prune(results: Path, keep: set[str]) -> None:
    """Remove the result folders of requests the history no longer holds."""
    if not results.is_dir():
        return
    wanted = {result_folder(results, request_id).name for request_id in keep}
    for folder in results.iterdir():
        if folder.name not in wanted:
            shutil.rmtree(folder, ignore_errors=True)
