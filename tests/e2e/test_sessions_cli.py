"""Sessions through `corral serve` and the CLI, the edgeECHO API on its own port, and a
SIGKILL of corral mid-session.

After the restart corral finds its sessions (store plus container labels) and finishes or
cleans each one; nothing is left on the engine and no session is lost.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from tests.support.edgeecho import build_emulators, summary
from tests.support.engines import LOCAL_URL, engine_container_ids
from tests.support.server import ADMIN, ServeProcess, free_port, run_cli

STUCK = """
x-corral-template:
  name: stuck
  ready_timeout: 60s
services:
  deaf:            # says it listens on 7000 but never does: its dependant waits
    image: local/busybox:1
    command: ["sleep", "600"]
    expose: ["7000"]
    stop_grace_period: 1s
  waiter:
    image: local/busybox:1
    command: ["true"]
    depends_on: [deaf]
"""
NAP = """
x-corral-template:
  name: nap
services:
  nap:
    image: local/busybox:1
    command: ["sleep", "4"]
"""


def _session(serve: ServeProcess, id: str) -> Any:
    with httpx.Client(headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as api:
        return api.get(f"{serve.url}/sessions/{id}").json()


def _wait_cleaned(serve: ServeProcess, id: str, limit: float = 60) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        view = _session(serve, id)
        if view["cleaned_at"]:
            return view
        time.sleep(0.2)
    raise AssertionError(f"session {id} not cleaned: {view}")


def test_cli_and_edgeecho_api(local_engine: str, tmp_path: Path) -> None:
    example = build_emulators()
    port = free_port()
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": local_engine,
        "CORRAL_EDGEECHO_PORT": str(port),
        "CORRAL_EDGEECHO_ANONYMOUS": "true",
        "CORRAL_SESSION_GRACE_SECONDS": "0.5",
    }
    serve = ServeProcess(tmp_path, env).start()
    try:
        added = run_cli(serve, "template", "add", str(example / "edgeecho.yml"))
        assert added.returncode == 0, added.stderr
        assert "template edgeecho created" in added.stdout
        assert "plain_stream" in added.stdout

        made = run_cli(serve, "--json", "session", "new", "edgeecho", "-p", "count=1000", "-p",
                    "plain_stream=false")  # fmt: skip
        assert made.returncode == 0, made.stderr
        session = json.loads(made.stdout)
        _wait_cleaned(serve, session["id"])
        logs = run_cli(serve, "session", "logs", session["id"], "segmentation")
        assert summary(logs.stdout) == {
            "role": "segmentation", "data_messages": 1000, "terminate": True,
        }  # fmt: skip
        listed = run_cli(serve, "session", "ls")
        assert session["id"] in listed.stdout
        assert "completed" in listed.stdout
        bad = run_cli(serve, "session", "new", "edgeecho", "-p", "count=lots")
        assert bad.returncode == 2
        assert "count" in bad.stderr

        # The seed's client: no token, its own port, its own answer shape.
        seed = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{seed}/").text == "Hello World"
        assert httpx.get(f"{seed}/test").text == "Working"
        answer = httpx.post(
            f"{seed}/post/", json={"count": 500, "plain_stream": False}, timeout=120
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"session_id", "network", "probe", "stream", "segmentation",
                             "message_count", "stream_type"}  # fmt: skip
        assert body["message_count"] == 500
        assert body["stream_type"] == "segmented"
        assert all(len(body[k]) == 64 for k in ("probe", "stream", "segmentation"))
        # `/post` without the slash answers too (no redirect); the emulators read
        # `plain_stream == 'True'` as the seed's do, so the plain session completing shows
        # the template rendered the bool as Python does.
        plain = httpx.post(f"{seed}/post", json={"count": 10, "plain_stream": True}, timeout=120)
        assert plain.status_code == 200, plain.text
        assert plain.json()["segmentation"] is None
        assert plain.json()["stream_type"] == "plain"
        wrong = httpx.post(f"{seed}/post/", json={"count": "ten", "plain_stream": True})
        assert wrong.status_code == 422
        assert "count" in wrong.json()["error"]["message"]
        # The main API is not on the seed's port, nor the seed's routes on the main one.
        assert httpx.get(f"{seed}/sessions").status_code == 404
        for id in (body["session_id"], plain.json()["session_id"]):
            assert _wait_cleaned(serve, id)["state"] == "completed"
            assert engine_container_ids(LOCAL_URL, f"corral.session={id}") == []
    finally:
        serve.stop()


def test_sigkill_mid_session_then_restart(local_engine: str, tmp_path: Path) -> None:
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": local_engine,
        "CORRAL_SESSION_GRACE_SECONDS": "0.5",
    }
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "stuck.yml").write_text(STUCK)
    (tmp_path / "templates" / "nap.yml").write_text(NAP)
    env["CORRAL_TEMPLATES_DIR"] = str(tmp_path / "templates")
    serve = ServeProcess(tmp_path, env).start()
    try:
        running = json.loads(run_cli(serve, "--json", "session", "new", "nap").stdout)
        assert running["state"] == "running"
        starting = json.loads(
            run_cli(serve, "--json", "session", "new", "stuck", "--no-wait").stdout
        )
        deadline = time.monotonic() + 30
        while len(engine_container_ids(LOCAL_URL, f"corral.session={starting['id']}")) < 2:
            assert time.monotonic() < deadline, "the stuck session never made its containers"
            time.sleep(0.1)
        assert _session(serve, starting["id"])["state"] == "starting"
        assert serve.proc is not None
        os.kill(serve.proc.pid, signal.SIGKILL)
        serve.stop()
        # While corral is down the nap ends on its own; the stuck one waits.
        time.sleep(4)

        serve.start()
        napped = _wait_cleaned(serve, running["id"])
        assert napped["state"] == "completed"
        assert [c["exit_code"] for c in napped["containers"]] == [0]
        stuck = _wait_cleaned(serve, starting["id"])
        assert stuck["state"] == "failed"
        assert "restarted while the session was starting" in stuck["reason"]
        for id in (running["id"], starting["id"]):
            assert engine_container_ids(LOCAL_URL, f"corral.session={id}") == []
            nets = subprocess.run(
                ["docker", "network", "ls", "-q", "--filter", f"label=corral.session={id}"],
                capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
            assert nets == []
        kinds = [line for line in run_cli(serve, "events", "-n", "100").stdout.splitlines()]
        assert any("session" in line and "cleaned" in line for line in kinds)
    finally:
        serve.stop()
