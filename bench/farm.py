"""Print farm: latency from a `ready` message to the take job on the arm's MQTT topic.

At a steady rate, printers' ids go to a RabbitMQ queue (default exchange, plain text, as
the seed's printers do). Two consumers turn them into jobs on MQTT: a minimal pika + paho
consumer (publish the job, then ack) and corral (`corral serve` with the farm on: store the
take and replace tasks, choose a bed, then dispatch to a simulated arm that does each job
in 10 ms). They take turns in rounds (A B, then B A, ...) so that the shared machine's load
falls on both alike. A subscriber times each take job's arrival and pairs it with its
ready message by printer id; jobs that never came are counted, not guessed.

The arm takes each job in turn, so when the ready messages ask for more jobs a second than
it does, a take waits for the jobs before it: before the rounds, a bare paho dispatcher
measures the arm's own pace on this broker (the floor of any one-job-at-a-time
dispatcher), and each corral round prints the jobs a second the arm did.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pika

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.brokers import AMQP_URL  # noqa: E402
from tests.support.farm import Names, arm, layout  # noqa: E402
from tests.support.private_brokers import PrivateMosquitto  # noqa: E402
from tests.support.server import ADMIN, ServeProcess  # noqa: E402

# The broker every MQTT client of the bench uses, and whether the simulated arm's socket
# sets TCP_NODELAY (set from the command line).
MQTT: dict[str, int] = {"port": 1883, "nodelay": 0}


class Clock:
    """Arrival time of each printer's first take job on a topic, and of every job."""

    def __init__(self, topic: str) -> None:
        self.arrivals: dict[str, float] = {}
        self.jobs: list[float] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"clock-{topic}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", MQTT["port"])
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        self.jobs.append(now)
        job = json.loads(message.payload)
        if job.get("take_from_printer"):
            self.arrivals.setdefault(str(job.get("printer_id")), now)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def send(queue: str, printers: list[str], rate: float) -> dict[str, float]:
    """Each printer's ready message, at `rate` per second: printer -> when it was sent."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True)
    sent = {}
    start = time.perf_counter()
    for i, printer in enumerate(printers):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent[printer] = time.perf_counter()
        channel.basic_publish("", queue, printer.encode(), pika.BasicProperties(delivery_mode=2))
    connection.close()
    return sent


def relay(names: Names, stop: threading.Event) -> None:
    """The minimal consumer: for each ready message, publish a take job, then ack."""
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"relay-{names.job}")
    publisher.connect("127.0.0.1", MQTT["port"])
    publisher.loop_start()
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue=names.ready, durable=True)
    channel.basic_qos(prefetch_count=20)
    for method, _, body in channel.consume(names.ready, inactivity_timeout=0.2):
        if stop.is_set():
            break
        if method is None:
            continue
        job = {
            "printer_id": body.decode(),
            "bed_id": None,
            "take_from_printer": True,
            "load_next_bed_without_homing": True,
            "open_doors": [],
        }
        publisher.publish(names.job, json.dumps(job), qos=1).wait_for_publish()
        channel.basic_ack(method.delivery_tag)
    channel.cancel()
    connection.close()
    publisher.loop_stop()
    publisher.disconnect()


class Outcome:
    """One approach's figures over its rounds: latencies paired by printer id, and every
    take job that never came."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.sent = 0
        self.missing = 0
        self.rounds = 0
        self.stalls: list[str] = []

    def add(self, sent: dict[str, float], arrivals: dict[str, float], ended: float) -> None:
        self.sent += len(sent)
        got = sorted((arrivals[p] - t) * 1000 for p, t in sent.items() if p in arrivals)
        self.latencies += got
        lost = [p for p in sent if p not in arrivals]
        self.rounds += 1
        if got:  # each round as it ends: a slow or stalled round shows which one it was
            print(
                f"  round {self.rounds} {self.name}: p50 {statistics.median(got):.1f} ms, "
                f"p99 {got[min(len(got) - 1, round(0.99 * (len(got) - 1)))]:.1f} ms, "
                f"missing {len(lost)}, load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        self.missing += len(lost)
        if lost:
            last = max(arrivals.values(), default=min(sent.values()))
            self.stalls.append(
                f"{len(lost)} of {len(sent)} take jobs missing (first: {lost[0]}), "
                f"none for the last {ended - last:.1f} s"
            )

    def describe(self) -> tuple[float, float]:
        if not self.latencies:
            print(f"{self.name:40} {'-':>8} {'-':>8} {'-':>8} {0:6} {self.missing:8}")
            return float("nan"), float("nan")
        ordered = sorted(self.latencies)
        p50 = statistics.median(ordered)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        print(
            f"{self.name:40} {p50:8.1f} {p99:8.1f} {ordered[-1]:8.1f} {len(ordered):6} "
            f"{self.missing:8}"
        )
        return p50, p99


def arm_floor(home: Path, count: int = 50) -> float:
    """The arm's own pace: a bare paho dispatcher (TCP_NODELAY, as corral's) sends the
    simulated arm a job as soon as it says available, `count` times; ms a job (median).
    No dispatcher that sends one job at a time can do better with this arm and broker."""
    names = Names.fresh()
    said: list[str] = []
    free = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if not message.retain and json.loads(message.payload).get("status") == "available":
            free.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"floor-{names.job}")
    client.on_message = on_message
    client.connect("127.0.0.1", MQTT["port"])
    client.subscribe(names.status, qos=1)
    client.loop_start()
    times = []
    with arm(names, home / "floor.jsonl", 0.01, MQTT["port"], bool(MQTT["nodelay"])):
        time.sleep(0.5)
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(count):
            free.clear()
            began = time.perf_counter()
            job = {"printer_id": i, "bed_id": None, "take_from_printer": True}
            client.publish(names.job, json.dumps(job), qos=1)
            if not free.wait(5):
                said.append("no answer")
                continue
            times.append((time.perf_counter() - began) * 1000)
    client.loop_stop()
    client.disconnect()
    floor = statistics.median(times) if times else float("nan")
    print(
        f"arm floor (a bare dispatcher): {floor:.1f} ms a job, p99 "
        f"{sorted(times)[round(0.99 * (len(times) - 1))] if times else float('nan'):.1f} ms, "
        f"{count} jobs{', ' + str(len(said)) + ' unanswered' if said else ''}",
        flush=True,
    )
    return floor


def arm_pace(jobs: list[float], printers: int, rate: float) -> None:
    """What the arm kept up with: its jobs (takes and replaces) per second from the first
    to the last, against the two per printer the ready messages ask for. An arm slower
    than that is the limit: the queue, and each take's wait, grow for the whole round."""
    if len(jobs) < 2:
        return
    pace = (len(jobs) - 1) / (max(jobs) - min(jobs))
    print(
        f"  arm: {len(jobs)} jobs in {max(jobs) - min(jobs):.1f} s, {pace:.1f} jobs/s "
        f"({1000 / pace:.0f} ms a job); asked: {2 * rate:g} jobs/s for {printers} printers",
        flush=True,
    )


def wait_for(arrivals: dict[str, float], sent: dict[str, float], limit: float) -> float:
    """Until every sent printer's take job came, or `limit` s of none coming; when the
    wait ended (perf_counter)."""
    seen, since = -1, time.monotonic()
    while not set(sent) <= set(arrivals):
        if len(arrivals) != seen:
            seen, since = len(arrivals), time.monotonic()
        if time.monotonic() - since > limit:
            break
        time.sleep(0.1)
    return time.perf_counter()


def run_relay(printers: list[str], rate: float, limit: float) -> tuple[dict, dict, float]:
    names = Names.fresh()
    clock = Clock(names.job)
    stop = threading.Event()
    worker = threading.Thread(target=relay, args=(names, stop), daemon=True)
    worker.start()
    time.sleep(0.5)
    sent = send(names.ready, printers, rate)
    ended = wait_for(clock.arrivals, sent, limit)
    stop.set()
    worker.join(timeout=10)
    clock.stop()
    return sent, dict(clock.arrivals), ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=300, help="printers, each ready once")
    parser.add_argument("--rate", type=float, default=2.0, help="ready messages per second")
    parser.add_argument("--rounds", type=int, default=2, help="turns of each approach")
    parser.add_argument("--stall", type=float, default=20.0, help="s with no job: stalled")
    parser.add_argument(
        "--broker",
        choices=["machine", "nodelay"],
        default="machine",
        help="the machine's Mosquitto, or a private one on a loopback port with "
        "set_tcp_nodelay true",
    )
    parser.add_argument(
        "--arm",
        choices=["dhr", "nodelay"],
        default="dhr",
        help="the simulated arm as DHR's (plain paho), or the same with TCP_NODELAY on its socket",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as brokers:
        broker = None
        if args.broker == "nodelay":
            broker = PrivateMosquitto(Path(brokers), nodelay=True).start()
            MQTT["port"] = broker.port
        MQTT["nodelay"] = int(args.arm == "nodelay")
        try:
            bench(args)
        finally:
            if broker is not None:
                broker.stop()


def bench(args: argparse.Namespace) -> None:
    printers = [f"p{i}" for i in range(args.messages)]
    print(
        f"ready -> take job latency, {args.messages} printers finishing at {args.rate:g}/s, "
        f"{args.rounds} rounds, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"broker: {args.broker} (port {MQTT['port']}), arm: {args.arm}", flush=True)
    minimal = Outcome("minimal pika + paho consumer")
    ours = Outcome("corral (stored tasks, bed choice, arm)")
    names = Names.fresh()
    with tempfile.TemporaryDirectory() as home:
        env = {"CORRAL_BOOTSTRAP_TOKEN": ADMIN, "CORRAL_LOCAL_DOCKER_URL": "", **names.env()}
        env["CORRAL_LOG_LEVEL"] = "warning"
        env["CORRAL_BROKERS"] = json.dumps(
            {"amqp": AMQP_URL, "mqtt": f"mqtt://127.0.0.1:{MQTT['port']}"}
        )
        serve = ServeProcess(Path(home), env).start()
        try:
            headers = {"Authorization": f"Bearer {ADMIN}"}
            with httpx.Client(base_url=serve.url, headers=headers, timeout=60) as api:
                # Each round's replaces load fresh clean beds.
                layout(api, printers=args.messages, spare_beds=args.messages * args.rounds + 10)
            arm_floor(Path(home))
            clock = Clock(names.job)
            with arm(names, Path(home) / "arm.jsonl", 0.01, MQTT["port"], bool(MQTT["nodelay"])):
                time.sleep(1.0)

                def corral_round() -> None:
                    clock.arrivals.clear()
                    clock.jobs.clear()
                    sent = send(names.ready, printers, args.rate)
                    ended = wait_for(clock.arrivals, sent, args.stall)
                    ours.add(sent, dict(clock.arrivals), ended)
                    arm_pace(clock.jobs, len(sent), args.rate)
                    time.sleep(1.0)  # the last replaces end: every printer is idle again

                def relay_round() -> None:
                    minimal.add(*run_relay(printers, args.rate, args.stall))

                turns: list[Callable[[], None]] = [relay_round, corral_round]
                for n in range(args.rounds):
                    for turn in turns if n % 2 == 0 else turns[::-1]:
                        turn()
            clock.stop()
        finally:
            serve.stop()
    print(f"{'approach':40} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'n':>6} {'missing':>8}")
    base = minimal.describe()
    mine = ours.describe()
    for outcome in (minimal, ours):
        for stall in outcome.stalls:
            print(f"{outcome.name:40} STALLED: {stall}")
    print(f"ratio corral/minimal: p50 {mine[0] / base[0]:.2f}x, p99 {mine[1] / base[1]:.2f}x")
    print(f"corral rounds with a stall (a take job missing): {len(ours.stalls)} of {ours.rounds}")


if __name__ == "__main__":
    main()
