"""`corral up`, `ps`, `stop`, `start`, `logs`, `stack validate` and `down` as a user runs them.

One host (the local engine); output is read as a person would read it.
"""

import subprocess
from pathlib import Path

from tests.support.engines import LOCAL_URL, engine_container_ids
from tests.support.server import ADMIN, ServeProcess

STACK = """\
services:
  talker:
    image: local/busybox:1
    command: ["sh", "-c", "while true; do echo hello from $$GREETING; sleep 1; done"]
    environment:
      GREETING: ${GREETING:-nobody}
    restart: always
  listener:
    image: local/busybox:1
    command: sleep 600
    depends_on: [talker]
    stop_grace_period: 1s
    deploy:
      replicas: 2
"""


def test_stack_commands(local_engine: str, tmp_path: Path) -> None:
    leftovers = engine_container_ids(LOCAL_URL, "corral.stack=clidemo")  # an aborted run's
    if leftovers:
        subprocess.run(["docker", "rm", "-f", *leftovers], check=True, capture_output=True)
    folder = tmp_path / "clidemo"
    folder.mkdir()
    (folder / "compose.yml").write_text(STACK)
    (folder / "broken.yml").write_text(
        "services:\n  a:\n    image: local/busybox:1\n    pid: host\n"
    )
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": LOCAL_URL,
        "GREETING": "corral",
    }
    serve = ServeProcess(tmp_path, env).start()
    try:
        checked = serve.cli("stack", "validate", str(folder / "compose.yml"), token=ADMIN)
        assert checked.returncode == 0, checked.stderr
        assert "start order: talker -> listener" in checked.stdout
        broken = serve.cli("stack", "validate", str(folder / "broken.yml"), token=ADMIN)
        assert broken.returncode == 2
        assert "line 4: services.a.pid" in broken.stderr

        up = serve.cli("up", "-f", str(folder / "compose.yml"), token=ADMIN)
        assert up.returncode == 0, up.stderr
        assert "stack clidemo: running" in up.stdout
        assert "clidemo-listener-2" in up.stdout
        assert "clidemo-talker-1 started on local" in up.stderr  # progress, as it happened
        assert len(engine_container_ids(LOCAL_URL, "corral.stack=clidemo")) == 3

        stopped = serve.cli("stop", "clidemo", "listener", token=ADMIN)
        assert stopped.returncode == 0, stopped.stderr
        rows = [line.split() for line in stopped.stdout.splitlines() if "listener" in line]
        assert len(rows) == 2
        assert all("stopped" in row for row in rows)
        started = serve.cli("start", "clidemo", token=ADMIN)
        assert started.stdout.count("running") >= 3

        logs = serve.cli("logs", "clidemo", "talker", "--tail", "2", token=ADMIN)
        assert logs.returncode == 0, logs.stderr
        assert "hello from corral" in logs.stdout
        missing = serve.cli("logs", "clidemo", "nobody", token=ADMIN)
        assert missing.returncode == 2
        assert "no service 'nobody'" in missing.stderr

        listing = serve.cli("ps", token=ADMIN)
        assert "clidemo-talker-1" in listing.stdout
        down = serve.cli("down", "clidemo", token=ADMIN)
        assert down.returncode == 0
        assert "3 containers" in down.stdout
        assert engine_container_ids(LOCAL_URL, "corral.stack=clidemo") == []
        again = serve.cli("down", "clidemo", token=ADMIN)
        assert again.returncode == 2
        assert "not found" in again.stderr
    finally:
        serve.stop()
