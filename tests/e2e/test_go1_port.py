"""The Go1 API on its own port, as the seed's clients call it (`curl -X POST :PORT/deploy/`).

`corral serve` with go1_port set listens on both ports; a token is required unless
go1_anonymous is set.
"""

import json
import subprocess
from pathlib import Path

from tests.support.engines import LOCAL_URL, engine_container_ids
from tests.support.server import ADMIN, ServeProcess, free_port

PREDEFINED = """\
services:
  ros-master:
    image: local/busybox:1
    command: ["httpd", "-f", "-p", "11311"]
    restart: always
  navigation:
    image: local/busybox:1
    command: sleep 600
    stop_grace_period: 1s
"""


def _curl(url: str, data: str | None = None, token: str | None = None) -> tuple[int, object]:
    args = ["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", url]
    if data is not None:
        args += ["-d", data]
    args += ["-H", "Content-Type: application/json"]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    body, _, code = done.stdout.rpartition("\n")
    return int(code), json.loads(body)


def test_go1_routes_on_their_own_port(local_engine: str, tmp_path: Path) -> None:
    (tmp_path / "go1.yml").write_text(PREDEFINED)
    go1_port = free_port()
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": LOCAL_URL,
        "CORRAL_GO1_FILE": str(tmp_path / "go1.yml"),
        "CORRAL_GO1_STACK": "seedgo1",
        "CORRAL_GO1_PORT": str(go1_port),
    }
    serve = ServeProcess(tmp_path, env).start()
    base = f"http://127.0.0.1:{go1_port}"
    try:
        assert f"Go1 API    http://127.0.0.1:{go1_port}/deploy/" in serve.output()
        code, body = _curl(f"{base}/deploy/")
        assert code == 401, body
        code, body = _curl(f"{base}/deploy/", token=ADMIN)
        assert code == 200, body
        assert body["success"] is True  # type: ignore[index]
        assert len(engine_container_ids(LOCAL_URL, "corral.stack=seedgo1")) == 2
        code, body = _curl(f"{base}/stop/", '{"containerName": ["navigation"]}', ADMIN)
        assert code == 200, body
        code, body = _curl(f"{base}/stop/", '{"containerName": "navigation"}', ADMIN)
        assert code == 422, body
        code, body = _curl(f"{base}/terminate/", token=ADMIN)
        assert (code, body) == (200, {"success": True, "removed": 2})
        assert engine_container_ids(LOCAL_URL, "corral.stack=seedgo1") == []
    finally:
        serve.stop()
