"""Print farm: latency from a `ready` message to the take job on the arm's MQTT topic.

At a steady rate, printers' ids go to a RabbitMQ queue (default exchange, plain text, as
the seed's printers do). Two consumers turn them into jobs on MQTT, one after the other in
one run: a minimal pika + paho consumer (publish the job, then ack) and corral (`corral
serve` with the farm on: store the take and replace tasks, choose a bed, then dispatch to a
simulated arm that does each job in 10 ms). A subscriber times each take job's arrival.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pika

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.brokers import AMQP_URL  # noqa: E402
from tests.support.farm import Names, arm, layout  # noqa: E402
from tests.support.server import ADMIN, ServeProcess  # noqa: E402


class Clock:
    """Arrival times of take jobs on a topic, in order."""

    def __init__(self, topic: str) -> None:
        self.arrivals: list[float] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"clock-{topic}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", 1883)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if json.loads(message.payload).get("take_from_printer"):
            self.arrivals.append(time.perf_counter())

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def send(queue: str, printers: list[str], count: int, rate: float) -> list[float]:
    """`count` ready messages at `rate` per second, round-robin over printers."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True)
    sent = []
    start = time.perf_counter()
    for i in range(count):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent.append(time.perf_counter())
        channel.basic_publish(
            "", queue, printers[i % len(printers)].encode(), pika.BasicProperties(delivery_mode=2)
        )
    connection.close()
    return sent


def baseline(names: Names, stop: threading.Event) -> None:
    """The minimal consumer: for each ready message, publish a take job, then ack."""
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="baseline-publisher")
    publisher.connect("127.0.0.1", 1883)
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


def latencies(sent: list[float], arrivals: list[float]) -> list[float]:
    """Latency of each take job that arrived (in order); missing ones are reported apart."""
    return [(a - s) * 1000 for s, a in zip(sent, arrivals, strict=False)]


def shortfall(name: str, sent: list[float], arrivals: list[float], ended: float) -> None:
    """A run that stalled, as figures: how many take jobs never came, and for how long
    none had come when the wait ended."""
    missing = len(sent) - len(arrivals)
    if missing <= 0:
        return
    last = arrivals[-1] if arrivals else sent[0]
    print(
        f"{name:40} STALLED: {missing} of {len(sent)} take jobs missing, "
        f"none for the last {ended - last:.1f} s"
    )


def describe(name: str, values: list[float]) -> tuple[float, float]:
    if not values:
        print(f"{name:40} {'-':>8} {'-':>8} {'-':>8} {0:6}")
        return float("nan"), float("nan")
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"{name:40} {p50:8.1f} {p99:8.1f} {max(ordered):8.1f} {len(ordered):6}")
    return p50, p99


def wait_for(arrivals: list[float], count: int, limit: float = 120) -> float:
    """Until `count` arrivals or `limit` s; when the wait ended (perf_counter)."""
    deadline = time.monotonic() + limit
    while len(arrivals) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rate", type=float, default=2.0, help="ready messages per second")
    args = parser.parse_args()
    args.printers = args.messages  # each printer finishes once: no ready is a duplicate
    printers = [f"p{i}" for i in range(args.printers)]
    print(
        f"ready -> take job latency, {args.messages} printers finishing at {args.rate:g}/s, "
        f"{dt.datetime.now():%Y-%m-%d %H:%M}"
    )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"{'approach':40} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'n':>6}")

    # The minimal pika + paho consumer.
    names = Names.fresh()
    clock = Clock(names.job)
    stop = threading.Event()
    worker = threading.Thread(target=baseline, args=(names, stop), daemon=True)
    worker.start()
    time.sleep(0.5)
    sent = send(names.ready, printers, args.messages, args.rate)
    ended = wait_for(clock.arrivals, len(sent))
    stop.set()
    worker.join(timeout=10)
    clock.stop()
    base = describe("minimal pika + paho consumer", latencies(sent, clock.arrivals))
    shortfall("minimal pika + paho consumer", sent, clock.arrivals, ended)

    # corral, as a process, with the arm simulator doing each job in 10 ms.
    names = Names.fresh()
    with tempfile.TemporaryDirectory() as home:
        env = {"CORRAL_BOOTSTRAP_TOKEN": ADMIN, "CORRAL_LOCAL_DOCKER_URL": "", **names.env()}
        env["CORRAL_LOG_LEVEL"] = "warning"
        serve = ServeProcess(Path(home), env).start()
        try:
            headers = {"Authorization": f"Bearer {ADMIN}"}
            with httpx.Client(base_url=serve.url, headers=headers, timeout=60) as api:
                layout(api, printers=args.printers, spare_beds=args.messages + 10)
            clock = Clock(names.job)
            with arm(names, Path(home) / "arm.jsonl", work=0.01):
                time.sleep(1.0)
                sent = send(names.ready, printers, args.messages, args.rate)
                ended = wait_for(clock.arrivals, len(sent))
            clock.stop()
            name = "corral (stored tasks, bed choice, arm)"
            ours = describe(name, latencies(sent, clock.arrivals))
            shortfall(name, sent, clock.arrivals, ended)
        finally:
            serve.stop()
    print(f"ratio corral/minimal: p50 {ours[0] / base[0]:.2f}x, p99 {ours[1] / base[1]:.2f}x")


if __name__ == "__main__":
    main()
