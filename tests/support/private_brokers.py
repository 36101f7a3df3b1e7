"""Private Mosquitto and RabbitMQ brokers for fault tests: each on free loopback ports with
its own data directory, started, stopped and restarted by its own PID (never the machine's
shared brokers on 1883 and 5672, which other tests use at the same time)."""

import os
import secrets
import signal
import subprocess
from pathlib import Path

from tests.support.brokers import wait_port
from tests.support.processes import free_port

from corral.fleet.vda5050.broker_access import acl_file, password_line, vehicle_user
from corral.fleet.vda5050.messages import Topics


class PrivateMosquitto:
    """Mosquitto with persistence on (as the machine's), restarted as a crash would."""

    def __init__(self, workdir: Path, nodelay: bool = False) -> None:
        self.dir = workdir / "mosquitto"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o777)  # started as root, it runs as user mosquitto
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"user root\npersistence true\npersistence_location {self.dir}/\n"
            f"log_dest file {self.dir}/mosquitto.log\n"
            + ("set_tcp_nodelay true\n" if nodelay else "")
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "PrivateMosquitto":
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)])
        wait_port(self.port, up=True, limit=30)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None
        wait_port(self.port, up=False, limit=30)

    def restart(self) -> None:
        self.stop()
        self.start()


class PrivateRabbitMQ:
    """A RabbitMQ node of its own (name, ports, mnesia, logs); durable queues and
    persistent messages survive its restart."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "rabbitmq"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "home").mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(self.dir / "home"),
            "RABBITMQ_NODENAME": f"corral-test-{secrets.token_hex(4)}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_BASE": str(self.dir),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "PrivateRabbitMQ":
        with (self.dir / "server.log").open("ab") as out:
            # Its own process group: the script and the Erlang VM it starts stop together.
            self.proc = subprocess.Popen(
                ["/usr/lib/rabbitmq/bin/rabbitmq-server"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_port(self.port, up=True, limit=120)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        wait_port(self.port, up=False, limit=30)

    def restart(self) -> None:
        self.stop()
        self.start()


class LockedMosquitto(PrivateMosquitto):
    """A private Mosquitto enforcing the password and ACL files corral writes (its
    broker_access): corral's user reaches every vehicle's topics, each vehicle user only its
    own, an `observer` user reads them all (the tests' recorder), anonymous clients nothing.
    It logs everything to `log` (refused publishes are logged at debug level)."""

    def __init__(self, workdir: Path, vehicles: list[tuple[str, str]]) -> None:
        super().__init__(workdir)
        self.passwords = {vehicle_user(m, s): secrets.token_hex(8) for m, s in vehicles}
        self.passwords |= {"corral": secrets.token_hex(8), "observer": secrets.token_hex(8)}
        lines = [password_line(user, pw) for user, pw in self.passwords.items()]
        (self.dir / "passwd").write_text("\n".join(lines) + "\n")
        acl = acl_file(vehicles, "corral", Topics()) + "\nuser observer\ntopic read uagv/#\n"
        (self.dir / "acl").write_text(acl)
        self.log = self.dir / "mosquitto.log"
        self.conf.write_text(
            self.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
            + f"password_file {self.dir}/passwd\nacl_file {self.dir}/acl\nlog_type all\n"
        )
        self.corral_url = self.url_as("corral")

    def url_as(self, user: str) -> str:
        return f"mqtt://{user}:{self.passwords[user]}@127.0.0.1:{self.port}"

    def vehicle_url(self, manufacturer: str, serial: str) -> str:
        return self.url_as(vehicle_user(manufacturer, serial))
