"""The edgeECHO example for tests: its template folder and emulator binaries, built once.

`examples/edgeecho/emulators/build.sh` compiles the static emulator; corral builds the images
from that folder when a session first needs them.
"""

import json
import subprocess
from pathlib import Path

from tests.support.engines import _file_lock

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "edgeecho"


def build_emulators() -> Path:
    """Compile the emulators (idempotent, one process at a time); the template folder."""
    with _file_lock("edgeecho-build"):
        done = subprocess.run(
            ["bash", str(EXAMPLE / "emulators" / "build.sh")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"building the edgeECHO emulators failed:\n{done.stderr}")
    return EXAMPLE


def summary(log: str) -> dict[str, object]:
    """The emulator's last line: {"role", "data_messages", "terminate"}."""
    lines = [line for line in log.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"no summary line in the output:\n{log[-2000:]}")
    parsed: dict[str, object] = json.loads(lines[-1])
    return parsed
