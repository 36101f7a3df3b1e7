"""An ssh:// engine reached through one `ssh -L` tunnel per host to the remote Docker socket.

Used by the Docker Engine driver: the system ssh client (keys and ~/.ssh/config as the
user set them, or the host's own identity file) forwards a local unix socket; corral owns
that ssh process and stops it. Each corral process keeps its sockets in a private folder
of its own (checked to be this user's, removed at exit), so two processes never share one.
"""

import atexit
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from corral.errors import Unreachable
from corral.model.hosts import EngineAddress, SshOptions

_folder: Path | None = None


def _process_folder() -> Path:
    """This process's private folder under /tmp/corral-ssh-<uid> (made once)."""
    global _folder
    if _folder is not None and _folder.is_dir():
        return _folder
    base = Path(tempfile.gettempdir()) / f"corral-ssh-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    info = base.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise Unreachable(
            f"{base} (for ssh tunnel sockets) is not a private folder of this user: "
            f"remove it (`rm -r {base}`) and corral makes it again"
        )
    _folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))
    atexit.register(shutil.rmtree, _folder, True)
    return _folder


def _user() -> str:
    """The name of the user this process runs as (whose ~/.ssh the ssh client reads)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _plain_words(
    log: str,
    target: str,
    remote: str,
    port: int,
    identity: str | None = None,
    known_hosts: str = "",
) -> str:
    """The ssh client's complaint, said so that the user knows what to change.
    `known_hosts`: the file the ssh client keeps host keys in for this user."""
    who = _user()
    known = known_hosts or "~/.ssh/known_hosts"
    host = target.rpartition("@")[2]
    entry = host if port == 22 else f"[{host}]:{port}"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in log:
        return (
            f"the ssh host key of {target} (port {port}) is not the one {known} holds for it "
            f"(the known_hosts of user {who}, who runs corral serve): if the machine's key "
            f"really changed, check the new key's fingerprint, then as {who} run "
            f"`ssh-keygen -R '{entry}' -f {known}` and `ssh-keyscan -p {port} {host} >> {known}`"
        )
    if "Host key verification failed" in log:
        return (
            f"the ssh host key of {target} (port {port}) is not in {known} (the known_hosts "
            f"of user {who}, who runs corral serve, not of the CLI's user): as {who}, check "
            f"the key's fingerprint and add it, with `ssh-keyscan -p {port} {host} >> {known}` "
            f"or by running `ssh -p {port} {target} true` once and accepting it"
        )
    if "administratively prohibited" in log:
        return (
            f"the ssh server of {target} refuses to forward to {remote} (sshd_config has "
            "AllowStreamLocalForwarding or AllowTcpForwarding off, or DisableForwarding on): "
            "allow stream-local forwarding for this user"
        )
    if "connect failed" in log and ("No such file" in log or "open failed" in log):
        if "Permission denied" in log:
            return f"the ssh user on {target} may not use {remote} (add it to the docker group)"
        return f"there is no Docker socket at {remote} on {target} (set the host's ssh socket)"
    if "Permission denied (" in log:
        said = next(line for line in log.splitlines() if "Permission denied (" in line)
        methods = said.rpartition("Permission denied ")[2].rstrip(".")
        if identity:
            return (
                f"the ssh server of {target} refused the host's identity file {identity} "
                f"(Permission denied {methods}): add its public key ({identity}.pub) to that "
                "user's authorized_keys there, or give the host the key that is"
            )
        return (
            f"the ssh server of {target} refused every key offered (Permission denied "
            f"{methods}): give the host its key (`corral host add … --ssh-identity KEY`, "
            f"hosts file and API `ssh: {{identity: KEY}}`), or set one for user {who}, who "
            "runs corral serve, in its ~/.ssh/config or ssh agent"
        )
    lines = [line for line in log.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _known_hosts_file(ssh: str, target: str, port: int) -> str:
    """The file the ssh client keeps this host's key in for this user (`ssh -G`), "" when
    it does not say."""
    try:
        shown = subprocess.run(
            [ssh, "-G", "-p", str(port), "--", target],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in shown.splitlines():
        key, _, value = line.partition(" ")
        if key == "userknownhostsfile" and value.split():
            return value.split()[0]
    return ""


class SshTunnel:
    def __init__(
        self, name: str, address: EngineAddress, timeout: float, options: SshOptions
    ) -> None:
        self.name = name
        self.address = address
        self.timeout = timeout
        self.identity = options.identity
        self.remote = options.socket
        self.local: Path | None = None
        self.log: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        a = self.address
        return f"{a.user}@{a.host}" if a.user else a.host

    def open(self) -> str:
        """Start the tunnel if it is not running; return the local engine URL."""
        if (
            self.proc is not None
            and self.proc.poll() is None
            and self.local is not None
            and self.local.exists()
        ):
            return f"unix://{self.local}"
        self.close()
        ssh = shutil.which("ssh")
        if ssh is None:
            raise Unreachable("ssh:// hosts need the `ssh` client on the corral server")
        if self.identity and not os.access(self.identity, os.R_OK):
            # ssh would only warn and go on with other keys: say it plainly instead.
            raise Unreachable(
                f"the host's ssh identity file {self.identity} cannot be read by user "
                f"{_user()}, who runs corral serve (missing, or not readable by that user)"
            )
        folder = _process_folder()
        stem = f"{self.name}-{secrets.token_hex(4)}"
        self.local, self.log = folder / f"{stem}.sock", folder / f"{stem}.log"
        seconds = max(1, round(self.timeout))
        options = [
            "BatchMode=yes",
            "ExitOnForwardFailure=yes",
            f"ConnectTimeout={seconds}",
            "ServerAliveInterval=5",
            "ServerAliveCountMax=2",
            "StreamLocalBindUnlink=yes",
            "LogLevel=INFO",  # the channel failures that explain a reset are INFO
        ]
        args = [ssh, "-N", "-T", *[a for o in options for a in ("-o", o)]]
        if self.identity:
            args += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        args += ["-L", f"{self.local}:{self.remote}", "-p", str(self.address.port)]
        args += ["--", self.target]
        with self.log.open("wb") as errors:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors
            )
        deadline = time.monotonic() + self.timeout + 1
        while time.monotonic() < deadline:
            if self.local.exists():
                return f"unix://{self.local}"
            if self.proc.poll() is not None:
                reason = self.explain() or f"ssh exited with status {self.proc.returncode}"
                self.close()
                raise Unreachable(f"ssh to {self.target} failed: {reason}")
            time.sleep(0.05)
        self.close()
        raise Unreachable(f"ssh to {self.target}: no tunnel within {self.timeout:g} s")

    def explain(self, settle: float = 0.0) -> str:
        """What ssh said went wrong, in plain words ("" when nothing); waits up to `settle`
        seconds for ssh to write it (it logs a refused channel just after the reset)."""
        deadline = time.monotonic() + settle
        while True:
            try:
                text = self.log.read_text(errors="replace") if self.log else ""
            except OSError:
                text = ""
            known = ""
            if "Host key verification failed" in text or "IDENTIFICATION HAS CHANGED" in text:
                known = _known_hosts_file(
                    shutil.which("ssh") or "ssh", self.target, self.address.port
                )
            found = _plain_words(
                text, self.target, self.remote, self.address.port, self.identity, known
            )
            if "failed" in text or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        for path in (self.local, self.log):
            if path is not None:
                path.unlink(missing_ok=True)
        self.local = self.log = None
