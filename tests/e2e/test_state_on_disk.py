"""corral's state on disk is private: after a first start and after a restart the home
folder is 0700 and the database files 0600; loosened modes are fixed at the next start (an
event says so), a loose database of another user stops the start with the fixing command,
and a bootstrap token given in the environment is never printed.
"""

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.processes import free_port
from tests.support.server import ADMIN, ServeProcess


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _database_files(home: Path) -> list[Path]:
    return sorted(home.glob("corral.db*"))


def test_home_and_database_modes(tmp_path: Path) -> None:
    home = tmp_path / "state"
    env = {"CORRAL_HOME": str(home), "CORRAL_BOOTSTRAP_TOKEN": ADMIN, "CORRAL_LOCAL_DOCKER_URL": ""}
    serve = ServeProcess(tmp_path, env).start()
    try:
        assert _mode(home) == 0o700
        files = _database_files(home)
        assert home / "corral.db" in files
        assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
        assert "CORRAL_BOOTSTRAP_TOKEN was installed" in serve.output()
    finally:
        serve.stop()
    output = serve.output()
    assert ADMIN not in output  # not in the banner, not in any log line

    # Loosened by hand (or by an older corral): fixed at the next start, and said so.
    os.chmod(home, 0o755)  # noqa: S103 - loosened on purpose, to be fixed
    for path in _database_files(home):
        os.chmod(path, 0o644)
    serve = ServeProcess(tmp_path, env).start()
    try:
        assert _mode(home) == 0o700
        files = _database_files(home)
        assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
        events = serve.cli("--json", "events", "-n", "50", token=ADMIN)
        assert f"made private: home folder {home}: mode 755 -> 700" in events.stdout
        assert f"made private: {home / 'corral.db'}: mode 644 -> 600" in events.stdout
    finally:
        serve.stop()
    assert ADMIN not in serve.output()


def test_another_users_open_database_stops_the_start(tmp_path: Path) -> None:
    home = tmp_path / "state"
    env = {"CORRAL_HOME": str(home), "CORRAL_BOOTSTRAP_TOKEN": ADMIN, "CORRAL_LOCAL_DOCKER_URL": ""}
    ServeProcess(tmp_path, env).start().stop()
    database = home / "corral.db"
    os.chmod(database, 0o644)
    os.chown(database, 65534, 65534)  # nobody's now: corral may not change its mode
    done = subprocess.run(
        [sys.executable, "-m", "corral", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout
    assert f"the database {database} is readable by other users (mode 644)" in done.stderr
    assert f"run `chmod 600 {database}" in done.stderr
    assert "Traceback" not in done.stderr
