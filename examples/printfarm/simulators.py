"""Simulators for the DHR print farm: printers that finish prints, and the robot arm.

Printers push their id to the RabbitMQ `ready` queue as the seed's pika script does
(default exchange, plain-text body). The arm takes jobs from MQTT `robot_arm/job`, says
`busy`, works for a set time, says `available` (retained, and again at every reconnect),
and records every job it received, with whether it was busy then, as JSON lines.

    python simulators.py arm --work 0.3 --record jobs.jsonl
    python simulators.py printers p1 p2 p3 --every 2
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pika


def finish(printer_ids: list[str], url: str = "amqp://guest:guest@127.0.0.1:5672/",
           queue: str = "ready") -> None:  # fmt: skip
    """Tell the farm these printers finished (one message each, as the seed does)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue=queue, durable=True)
        for printer in printer_ids:
            channel.basic_publish(
                exchange="",
                routing_key=queue,
                body=printer.encode(),
                properties=pika.BasicProperties(delivery_mode=2),
            )
    finally:
        connection.close()


class Arm:
    """A robot arm on MQTT that does each job in `work` seconds."""

    def __init__(
        self,
        record: Path,
        work: float = 0.3,
        host: str = "127.0.0.1",
        port: int = 1883,
        job_topic: str = "robot_arm/job",
        status_topic: str = "robot_arm/status",
        nodelay: bool = False,
    ) -> None:
        self.record, self.work = record, work
        self.job_topic, self.status_topic = job_topic, status_topic
        self.status = "available"
        self.lock = threading.Lock()
        # A persistent session (clean_session False, one id for the arm's life): jobs sent
        # while it reconnects wait for it at the broker instead of being dropped.
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"dhr-robot-arm-{secrets.token_hex(4)}",
            clean_session=False,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        if nodelay:  # the one difference: its messages leave without Nagle's wait
            self.client.on_socket_open = lambda client, userdata, sock: sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect_async(host, port, keepalive=10)

    def start(self) -> Arm:
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def _say(self, status: str) -> None:
        self.status = status
        self.client.publish(self.status_topic, json.dumps({"status": status}), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.job_topic, qos=1)
        with self.lock:
            self._say(self.status)  # a restarted broker forgot the retained status

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            job = json.loads(message.payload)
        except ValueError:
            job = {"unreadable": message.payload.decode(errors="replace")}
        with self.lock:
            busy = self.status == "busy"
            with self.record.open("a") as out:
                out.write(json.dumps({"time": time.time(), "busy": busy, "job": job}) + "\n")
            if busy:
                return  # a real arm would refuse it too
            self._say("busy")
        threading.Timer(self.work, self._done).start()

    def _done(self) -> None:
        with self.lock:
            self._say("available")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    arm = sub.add_parser("arm", help="run the robot arm")
    arm.add_argument("--work", type=float, default=0.3, help="seconds per job")
    arm.add_argument("--record", type=Path, default=Path("arm-jobs.jsonl"))
    arm.add_argument("--mqtt-port", type=int, default=1883)
    printers = sub.add_parser("printers", help="printers finishing prints in turn")
    printers.add_argument("ids", nargs="+")
    printers.add_argument("--every", type=float, default=2.0, help="seconds between prints")
    printers.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if args.what == "arm":
        running = Arm(args.record, args.work, port=args.mqtt_port).start()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            running.stop()
    else:
        for _ in range(args.rounds):
            for printer in args.ids:
                finish([printer])
                print(f"printer {printer} finished", flush=True)
                time.sleep(args.every)


if __name__ == "__main__":
    main()
