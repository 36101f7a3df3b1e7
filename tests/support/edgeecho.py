"""The edgeECHO example for tests: its template folder and emulator binaries, built once.

`examples/edgeecho/emulators/build.sh` compiles the static emulator; corral builds the images
from that folder when a session first needs them.
"""

import json
from pathlib import Path

from tests.support.engines import _file_lock
from tests.support.processes import run_checked

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "edgeecho"


def build_emulators() -> Path:
    """Compile the emulators (idempotent, one process at a time); the template folder."""
    with _file_lock("edgeecho-build"):
        build = ["bash", str(EXAMPLE / "emulators" / "build.sh")]
        run_checked(build, 300, "building the edgeECHO emulators failed")
    return EXAMPLE


def summary(log: str) -> dict[str, object]:
    """The emulator's last line: {"role", "data_messages", "terminate"}."""
    lines = [line for line in log.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"no summary line in the output:\n{log[-2000:]}")
    parsed: dict[str, object] = json.loads(lines[-1])
    return parsed
