"""`corral serve` and the `corral` CLI as a user runs them, on SQLite and on PostgreSQL.

The server prints its admin token once; hosts, tokens and events survive a restart.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
from tests.support.engines import ROBOT_URL, RobotEngine
from tests.support.server import ServeProcess, corral_command


@pytest.fixture(params=["sqlite", "postgres"])
def database_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    return {"CORRAL_DATABASE_URL": request.getfixturevalue("pg_url")}


def test_serve_hosts_cli_and_restart(
    local_engine: str, robot_engine: RobotEngine, tmp_path: Path, database_env: dict[str, str]
) -> None:
    env = {
        **database_env,
        "CORRAL_CLI_CONFIG": str(tmp_path / "cli.yaml"),
        "CORRAL_ENGINE_NETWORKS": "127.0.0.0/8,10.231.0.0/24",
        "CORRAL_LOCAL_DOCKER_URL": local_engine,
    }
    serve = ServeProcess(tmp_path, env).start()
    try:
        token = serve.first_admin_token()
        assert token, serve.output()
        assert f"{serve.url}/docs" in serve.output()
        assert f"{serve.url}/ui/" in serve.output()

        added = serve.cli(
            "host", "add", "robot", ROBOT_URL, "--label", "role=robot", "--insecure", token=token
        )
        assert added.returncode == 0, added.stderr
        listing = serve.cli("host", "ls", token=token)
        assert listing.returncode == 0, listing.stderr
        lines = listing.stdout.splitlines()
        assert lines[0].split()[:3] == ["NAME", "URL", "STATE"]
        rows = {line.split()[0]: line for line in lines[1:]}
        assert set(rows) == {"local", "robot"}
        assert all("reachable" in row and "GiB" in row for row in rows.values())
        hosts = json.loads(serve.cli("--json", "host", "ls", token=token).stdout)
        assert all(h["facts"]["cpus"] >= 1 and h["facts"]["memory_bytes"] > 0 for h in hosts)

        issued = serve.cli("--json", "token", "create", "ci", "--role", "viewer", token=token)
        viewer = json.loads(issued.stdout)["token"]
        denied = serve.cli("host", "rm", "robot", token=viewer)
        assert denied.returncode == 2
        assert denied.stderr.startswith("error: role 'viewer' may not write")
        assert "Traceback" not in denied.stderr

        missing = serve.cli("host", "inspect", "ghost", token=token)
        assert (missing.returncode, missing.stderr.strip()) == (2, "error: host 'ghost' not found")
        unauth = serve.cli("host", "ls", token="")
        assert unauth.returncode == 2
        assert "missing token" in unauth.stderr
        bad = serve.cli("host", "add", "r2", "tcp://10.231.0.2", token=token)
        assert bad.returncode == 2
        assert "needs a port" in bad.stderr

        follower = subprocess.Popen(
            [*corral_command(), "events", "-f", "-n", "0", "--kind", "host.*"],
            env={**serve.env, "CORRAL_URL": serve.url, "CORRAL_TOKEN": token},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.5)  # let it connect before the change it should see
            serve.cli("host", "rm", "robot", token=token)
            line = follower.stdout.readline() if follower.stdout else ""
            assert "host.removed" in line, line
            assert "host/robot" in line, line
        finally:
            follower.terminate()
            follower.communicate(timeout=10)
        readd = serve.cli(
            "host", "add", "robot", ROBOT_URL, "-l", "role=robot", "--insecure", token=token
        )
        assert readd.returncode == 0, readd.stderr

        login = serve.cli("login", "--url", serve.url, "--token", token)
        assert login.returncode == 0, login.stderr
        assert serve.cli("whoami").stdout.startswith("admin (admin)")
        assert serve.stop() == 0

        down = serve.cli("host", "ls", token=token)
        assert down.returncode == 1
        assert "cannot reach corral" in down.stderr

        serve.start()
        assert serve.output().count("CORRAL_TOKEN=") == 1, "the token is printed only once"
        again = json.loads(serve.cli("--json", "host", "ls").stdout)
        assert {h["name"] for h in again} == {"local", "robot"}
        assert "robot" in {h["name"] for h in again if h["labels"] == {"role": "robot"}}
        assert json.loads(serve.cli("--json", "whoami", token=viewer).stdout)["role"] == "viewer"
        events = serve.cli("events", "-n", "200")
        assert events.returncode == 0
        assert "host.added" in events.stdout
        assert "host/robot" in events.stdout
        assert events.stdout.count("corral.started") == 2
    finally:
        serve.stop()


def test_bad_database_url_is_one_clear_line(tmp_path: Path) -> None:
    env = {"CORRAL_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/none"}
    serve = ServeProcess(tmp_path, env)
    result = serve.cli("serve", "--port", str(serve.port))
    assert result.returncode == 1
    assert result.stderr.startswith("error: corral could not start:"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
