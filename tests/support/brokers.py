"""The machine's RabbitMQ and Mosquitto for tests: addresses, and restarting them (by their
own PIDs) the way an operator or a crash would."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
MQTT_URL = "mqtt://127.0.0.1:1883"
MOSQUITTO_PID = Path("/run/mosquitto/mosquitto.pid")


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, up: bool, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while port_open(port) != up:
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} did not go {'up' if up else 'down'} in {limit} s")
        time.sleep(0.1)


def restart_rabbitmq() -> None:
    """Stop the RabbitMQ node and start it again; durable queues and persistent messages
    survive, every connection is dropped."""
    subprocess.run(["rabbitmqctl", "-q", "stop"], check=True, capture_output=True, timeout=120)
    wait_port(5672, up=False)
    subprocess.run(["rabbitmq-server", "-detached"], check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 180
    while True:  # the node answers rabbitmqctl only a moment after -detached returns
        done = subprocess.run(
            ["rabbitmqctl", "-q", "await_startup", "--timeout", "10"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"rabbitmq did not come back: {done.stderr.decode()[-500:]}")
        time.sleep(1)
    wait_port(5672, up=True)


def restart_mosquitto() -> None:
    """SIGTERM Mosquitto by its PID file and start it again with the machine's config."""
    pid = int(MOSQUITTO_PID.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("mosquitto did not stop")
        time.sleep(0.05)
    wait_port(1883, up=False)
    subprocess.run(
        ["mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf"], check=True, timeout=30
    )
    wait_port(1883, up=True)
