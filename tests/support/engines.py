"""The test bed of real Docker engines: the machine's own dockerd and a "robot" dockerd.

The robot engine runs in its own network namespace at 10.231.0.2 (docs: test-hosts.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import io
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

LOCAL_URL = "unix:///var/run/docker.sock"
EDGE_ADDR = "10.231.0.1"
ROBOT_ADDR = "10.231.0.2"
ROBOT_PORT = 2375
ROBOT_URL = f"tcp://{ROBOT_ADDR}:{ROBOT_PORT}"
# The two hosts of the shared test bed, as `PUT /hosts` takes them.
TWO_HOSTS = {
    "hosts": [
        {"name": "edge", "url": LOCAL_URL, "labels": {"role": "edge"}},
        # Plain tcp:// off this machine (the robot's namespace): accepted explicitly.
        {"name": "robot", "url": ROBOT_URL, "labels": {"role": "robot"}, "insecure": True},
    ]
}

NETNS = "corral-robot"
NETNS_PATH = Path("/var/run/netns") / NETNS
VETH_EDGE = "veth-crl-e"
VETH_ROBOT = "veth-crl-r"
ROBOT_DIR = Path("/tmp/corral-robot")
LOCK_DIR = Path("/tmp/corral-testbed-locks")

BUSYBOX_APPLETS = """
    sh ash sleep cat nc httpd echo ls env true false ps kill id hostname date mkdir rm touch
    grep head tail wc seq printf test [ [[ cp mv ln chmod sed tr cut sort uniq tee uname pwd
    basename dirname which xargs awk timeout ip ping nslookup stat readlink du df free uptime
    md5sum sha256sum base64 dd find mktemp yes sync pidof
""".split()  # noqa: SIM905 - easier to read and extend than a list of 60 strings


def _run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _docker(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return _run(["docker", "-H", url, *args], timeout=timeout)


@contextlib.contextmanager
def _file_lock(name: str) -> Iterator[None]:
    """Serialize test-bed changes between processes (pytest-xdist workers, parallel runs)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with (LOCK_DIR / f"{name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


ROBOT_USERS = LOCK_DIR / "robot-users"


def hold_robot(owner: int) -> None:
    """Record that the pytest session `owner` (a pid) uses the robot engine."""
    with _file_lock("robot"):
        ROBOT_USERS.mkdir(parents=True, exist_ok=True)
        (ROBOT_USERS / str(owner)).touch()


def release_robot(owner: int) -> bool:
    """Forget `owner`'s use; True when it used the engine and no other live session does
    (then it may be torn down), so one session's end never pulls it from under another."""
    with _file_lock("robot"):
        mine = ROBOT_USERS / str(owner)
        if not mine.exists():
            return False
        mine.unlink()
        others = [p for p in ROBOT_USERS.iterdir() if p.name.isdigit()]
        live = [p for p in others if _pid_alive(int(p.name))]
        for stale in set(others) - set(live):
            stale.unlink(missing_ok=True)
        return not live


def ensure_local_engine() -> None:
    """Raise RuntimeError unless the machine's own dockerd answers on its socket."""
    try:
        info = _docker(LOCAL_URL, "info", "--format", "{{.ServerVersion}}", timeout=30)
    except FileNotFoundError:
        raise RuntimeError(
            "the docker CLI is not installed; run scripts/setup.sh (it installs docker.io)"
        ) from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"the local Docker engine at {LOCAL_URL} did not answer in 30 s"
        ) from None
    if info.returncode != 0 or not info.stdout.strip():
        raise RuntimeError(
            f"the local Docker engine at {LOCAL_URL} does not answer "
            f"({info.stderr.strip() or 'no output'}); run scripts/setup.sh, it starts dockerd"
        )


def running_container_ids(docker_url: str, label: str) -> list[str]:
    """Full IDs of the running containers with this label filter ("key=value")."""
    listed = _docker(docker_url, "ps", "--quiet", "--no-trunc", "--filter", f"label={label}")
    if listed.returncode != 0:
        raise RuntimeError(f"docker ps on {docker_url} failed: {listed.stderr.strip()}")
    return listed.stdout.split()


def engine_container_ids(docker_url: str, label: str | None = None) -> list[str]:
    """Full IDs of all containers (running or not) on the engine, optionally by label filter.

    `label` is a Docker label filter: "key" or "key=value".
    """
    args = ["ps", "--all", "--quiet", "--no-trunc"]
    if label is not None:
        args += ["--filter", f"label={label}"]
    listed = _docker(docker_url, *args)
    if listed.returncode != 0:
        raise RuntimeError(f"docker ps on {docker_url} failed: {listed.stderr.strip()}")
    return listed.stdout.split()


def _busybox_rootfs_tar() -> bytes:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise RuntimeError("busybox is missing; run scripts/setup.sh (it installs busybox-static)")
    listed = _run([busybox, "--list"])
    available = set(listed.stdout.split())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        for name in ("bin", "etc", "root", "proc", "sys", "dev", "var", "var/www", "usr"):
            add_dir(name)
        add_dir("tmp", 0o1777)
        add_file("bin/busybox", Path(busybox).read_bytes(), 0o755)
        for applet in BUSYBOX_APPLETS:
            if applet in available or applet in ("[", "[["):
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type = tarfile.SYMTYPE
                link.linkname = "busybox"
                tar.addfile(link)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return buffer.getvalue()


def build_busybox_image(docker_url: str, tag: str = "local/busybox:1") -> None:
    """Make sure the engine has a small busybox image `tag` (built from busybox-static)."""
    if _docker(docker_url, "image", "inspect", "--format", "{{.Id}}", tag).returncode == 0:
        return
    key = hashlib.sha256(f"{docker_url} {tag}".encode()).hexdigest()[:16]
    with _file_lock(f"image-{key}"):
        if _docker(docker_url, "image", "inspect", "--format", "{{.Id}}", tag).returncode == 0:
            return
        imported = subprocess.run(
            [
                "docker",
                "-H",
                docker_url,
                "import",
                "--change",
                "ENV PATH=/bin",
                "--change",
                'CMD ["/bin/sh"]',
                "-",
                tag,
            ],
            input=_busybox_rootfs_tar(),
            capture_output=True,
            timeout=120,
            check=False,
        )
        if imported.returncode != 0:
            raise RuntimeError(
                f"docker import of {tag} into {docker_url} failed: "
                f"{imported.stderr.decode(errors='replace').strip()}"
            )


def _ping(host: str, port: int, timeout: float = 1.0) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/_ping")
        response = conn.getresponse()
        return response.status == 200 and response.read().strip() == b"OK"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _robot_link_present() -> bool:
    """True while the host side of the veth pair exists.

    Without it 10.231.0.2 is not on-link and a connection would follow the default route off
    this machine, so nothing is sent there then.
    """
    return Path("/sys/class/net", VETH_EDGE).exists()


def _port_refuses(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        # Unreachable or timed out: nothing accepts connections there either.
        return True


def _pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state is the field after the parenthesised command name.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = _run(["ip", *args], timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


class RobotEngine:
    """A second dockerd in network namespace `corral-robot`, reachable at ROBOT_URL.

    Host side of the veth pair is 10.231.0.1/24 (EDGE_ADDR), the namespace side
    10.231.0.2/24 (ROBOT_ADDR). State lives under /tmp/corral-robot; the data-root is kept
    across runs so imported images stay cached.
    """

    def __init__(self, base: Path = ROBOT_DIR) -> None:
        self.base = base
        self.data_root = base / "data"
        self.exec_root = base / "exec"
        self.pidfile = base / "docker.pid"
        self.socket = base / "docker.sock"
        self.log = base / "dockerd.log"

    @property
    def url(self) -> str:
        return ROBOT_URL

    @property
    def socket_url(self) -> str:
        return f"unix://{self.socket}"

    # ------------------------------------------------------------------ state
    def is_up(self) -> bool:
        """True when the engine answers /_ping over tcp at ROBOT_URL."""
        return _robot_link_present() and _ping(ROBOT_ADDR, ROBOT_PORT)

    def pid(self) -> int | None:
        """PID of the running robot dockerd from its pid file, or None."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return None
        # Guard against a recycled PID: it must be the dockerd that owns this pid file.
        return pid if str(self.pidfile).encode() in cmdline else None

    # ------------------------------------------------------------------ lifecycle
    def setup(self) -> RobotEngine:
        """Create whatever is missing (netns, veth, addresses, dockerd) and wait until it answers.

        Reuses a namespace and engine left up by an earlier run.
        """
        with _file_lock("robot"):
            self._ensure_network()
            if not self.is_up():
                self._start_dockerd()
        return self

    def start(self) -> None:
        """Start the robot dockerd again after stop(); waits until it answers."""
        with _file_lock("robot"):
            if not NETNS_PATH.exists():
                self._ensure_network()
            if not self.is_up():
                self._start_dockerd()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop dockerd by its pid file; return once it is gone and the tcp port refuses."""
        pid = self.pid()
        containerd = self._containerd_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not _wait_gone(pid, 10):
                    raise RuntimeError(f"robot dockerd (pid {pid}) does not exit")
        # dockerd's own containerd must be gone too, or the next start waits on it and fails.
        if containerd is not None and not _wait_gone(containerd, 10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(containerd, signal.SIGKILL)
            _wait_gone(containerd, 5)
        deadline = time.monotonic() + timeout
        while _robot_link_present() and not _port_refuses(ROBOT_ADDR, ROBOT_PORT):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ROBOT_URL} still accepts connections after stop()")
            time.sleep(0.1)

    def teardown(self) -> None:
        """Stop dockerd, delete the namespace and veth pair and the run-time leftovers."""
        with _file_lock("robot"):
            self.stop()
            if NETNS_PATH.exists():
                _ip("netns", "del", NETNS, check=False)
            if _ip("link", "show", VETH_EDGE, check=False).returncode == 0:
                _ip("link", "del", VETH_EDGE, check=False)
            shutil.rmtree(self.exec_root, ignore_errors=True)
            for leftover in (self.pidfile, self.socket):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    # ------------------------------------------------------------------ internals
    def _ensure_network(self) -> None:
        # A guard: with the veth gone, traffic for the namespace's range must fail here,
        # never follow the default route off the machine. The veth's own connected route
        # (metric 0) wins while it exists.
        _ip("route", "replace", "unreachable", "10.231.0.0/24", "metric", "4000")
        if not NETNS_PATH.exists():
            _ip("netns", "del", NETNS, check=False)  # a half-registered name
            _ip("netns", "add", NETNS)
        in_ns = _ip("-n", NETNS, "link", "show", VETH_ROBOT, check=False).returncode == 0
        on_host = _ip("link", "show", VETH_EDGE, check=False).returncode == 0
        if not (in_ns and on_host):
            for stale in (VETH_EDGE, VETH_ROBOT):
                if _ip("link", "show", stale, check=False).returncode == 0:
                    _ip("link", "del", stale, check=False)
            if in_ns:
                _ip("-n", NETNS, "link", "del", VETH_ROBOT, check=False)
            _ip("link", "add", VETH_EDGE, "type", "veth", "peer", "name", VETH_ROBOT)
            _ip("link", "set", VETH_ROBOT, "netns", NETNS)
        _ip("addr", "replace", f"{EDGE_ADDR}/24", "dev", VETH_EDGE)
        _ip("link", "set", VETH_EDGE, "up")
        _ip("-n", NETNS, "addr", "replace", f"{ROBOT_ADDR}/24", "dev", VETH_ROBOT)
        _ip("-n", NETNS, "link", "set", VETH_ROBOT, "up")
        _ip("-n", NETNS, "link", "set", "lo", "up")

    def _start_dockerd(self, timeout: float = 30.0, retry: bool = True) -> None:
        pid = self.pid()
        if pid is not None:
            # A dockerd from an earlier run that does not answer (starting or wedged).
            if self._wait_up(10):
                return
            self.stop()
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()
        self._clear_stale_containerd()
        self._forget_dead_swarm()
        for path in (self.base, self.data_root, self.exec_root):
            path.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            # `setsid --fork` detaches dockerd from this process: it is never our child, so
            # there is no zombie to reap and it is always found and stopped by its pid file.
            launcher = subprocess.run(
                [
                    "setsid",
                    "--fork",
                    "nsenter",
                    f"--net={NETNS_PATH}",
                    "dockerd",
                    "--data-root",
                    str(self.data_root),
                    "--exec-root",
                    str(self.exec_root),
                    "--pidfile",
                    str(self.pidfile),
                    "-H",
                    self.socket_url,
                    "-H",
                    f"tcp://{ROBOT_ADDR}:{ROBOT_PORT}",
                    "--tls=false",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                timeout=30,
                check=False,
            )
        if launcher.returncode == 0 and not self._wait_up(timeout) and retry:
            # A containerd from the last run may still have held its socket: once more.
            self.stop()
            self._start_dockerd(timeout, retry=False)
            return
        if launcher.returncode != 0 or not self._wait_up(1):
            tail = self.log.read_text(errors="replace").splitlines()[-20:]
            self.stop()
            raise RuntimeError(
                f"robot dockerd did not answer at {ROBOT_URL} within {timeout} s; "
                f"last lines of {self.log}:\n" + "\n".join(tail)
            )

    def _forget_dead_swarm(self) -> None:
        """The swarm state of an earlier run whose manager (the local engine) has since left
        it makes dockerd spend a minute at start trying to rejoin and to attach that swarm's
        task containers, longer than a start may take: forget it (as `swarm leave --force`
        would); ensure_swarm joins a new one when a test needs it."""
        state = self.data_root / "swarm"
        if state.exists() and _swarm_state(LOCAL_URL) != "active":
            shutil.rmtree(state, ignore_errors=True)

    def _containerd_pid(self) -> int | None:
        try:
            pid = int((self.exec_root / "containerd" / "containerd.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _clear_stale_containerd(self) -> None:
        """Remove what a killed dockerd leaves of its own containerd.

        dockerd trusts exec-root/containerd/containerd.pid; if that PID is an orphaned
        containerd, or a zombie nobody has reaped yet, it waits 30 s for it and gives up.
        """
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            cmdline = b""
        if _pid_alive(pid) and str(self.exec_root).encode() in cmdline:
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                if _wait_gone(pid, wait):
                    break
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()

    def _wait_up(self, timeout: float) -> bool:
        """Wait until the engine answers; False early if its dockerd has died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_up():
                return True
            if self.pidfile.exists() and self.pid() is None:
                return False
            time.sleep(0.1)
        return self.is_up()


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def _swarm_state(docker_url: str) -> str:
    done = _docker(docker_url, "info", "--format", "{{.Swarm.LocalNodeState}}", timeout=30)
    return done.stdout.strip()


def _manager_knows(docker_url: str) -> bool:
    """Whether the local manager lists this engine's swarm node as ready."""
    node = _docker(docker_url, "info", "--format", "{{.Swarm.NodeID}}", timeout=30).stdout.strip()
    listed = _docker(LOCAL_URL, "node", "ls", "--format", "{{.ID}} {{.Status}}", timeout=30)
    return bool(node) and f"{node} Ready" in listed.stdout


def ensure_swarm(robot: RobotEngine) -> None:
    """Local engine as manager (advertised on the veth), the robot engine as worker."""
    if _swarm_state(LOCAL_URL) != "active":
        init = _docker(LOCAL_URL, "swarm", "init", "--advertise-addr", EDGE_ADDR, timeout=60)
        if init.returncode != 0:
            raise RuntimeError(f"swarm init failed: {init.stderr.strip()}")
    robot_state = _swarm_state(robot.url)
    if robot_state == "active" and not _manager_knows(robot.url):
        robot_state = "stale"  # a swarm of an earlier run, or one this manager left
    if robot_state not in ("active", "inactive"):
        _docker(robot.url, "swarm", "leave", "--force", timeout=60)
    if robot_state != "active":
        token = _docker(LOCAL_URL, "swarm", "join-token", "-q", "worker").stdout.strip()
        join = _docker(
            robot.url,
            "swarm",
            "join",
            "--advertise-addr",
            ROBOT_ADDR,
            "--token",
            token,
            f"{EDGE_ADDR}:2377",
            timeout=60,
        )
        if join.returncode != 0:
            raise RuntimeError(f"swarm join failed: {join.stderr.strip()}")


def leave_swarm(robot: RobotEngine) -> None:
    for url in (robot.url, LOCAL_URL):
        if url == LOCAL_URL or robot.is_up():
            _docker(url, "swarm", "leave", "--force", timeout=60)
