"""A robot arm that behaves as DHR's does (seed 002 and its README), for fault tests.

Written from the seed, not from corral: it subscribes to `robot_arm/job` on a clean MQTT
session (so a job published while it is disconnected never reaches it), publishes
`robot_arm/status` ({"status": "busy" | "available"}) only when its status changes, not
retained, and only while connected (a change during a broker outage is never said), says
nothing when it connects, and ignores any job it receives while busy (counted, so a test
can prove none came). `deaf(n)` makes it drop the next n jobs silently, as if they were lost
on the way.
"""

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

JOB_FIELDS = {"printer_id", "bed_id", "take_from_printer", "load_next_bed_without_homing",
              "open_doors"}  # fmt: skip


@dataclass
class ArmRecord:
    """What the arm saw and did."""

    done: list[dict[str, Any]] = field(default_factory=list)  # jobs it carried out, in order
    while_busy: list[dict[str, Any]] = field(default_factory=list)  # jobs that came while busy
    dropped: list[dict[str, Any]] = field(default_factory=list)  # lost on purpose (deaf)
    malformed: list[bytes] = field(default_factory=list)  # not a DHR job


class DhrArm:
    def __init__(
        self,
        port: int,
        work: float = 0.3,
        job_topic: str = "robot_arm/job",
        status_topic: str = "robot_arm/status",
    ) -> None:
        self.work = work
        self.job_topic, self.status_topic = job_topic, status_topic
        self.record = ArmRecord()
        self.status = "available"
        self._deaf = 0
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"robot-arm-{secrets.token_hex(4)}",
            clean_session=True,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect_async("127.0.0.1", port, keepalive=10)

    def start(self) -> "DhrArm":
        self.client.loop_start()
        return self

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self.client.loop_stop()
        self.client.disconnect()

    def deaf(self, jobs: int) -> None:
        with self._lock:
            self._deaf = jobs

    def subscribed(self) -> bool:
        return self.client.is_connected()

    def _change(self, status: str) -> None:
        """Say a new status; said only on a change, lost if the broker is not there."""
        if status == self.status:
            return
        self.status = status
        if self.client.is_connected():
            self.client.publish(self.status_topic, json.dumps({"status": status}), qos=1)

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.job_topic, qos=1)  # clean session: subscribe at every connect

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            job = json.loads(message.payload)
        except ValueError:
            job = None
        if not isinstance(job, dict) or set(job) != JOB_FIELDS:
            self.record.malformed.append(message.payload)
            return
        with self._lock:
            if self._deaf > 0:
                self._deaf -= 1
                self.record.dropped.append(job)
                return
            if self.status == "busy":
                self.record.while_busy.append(job)
                return
            self._change("busy")
        if self.work <= 0:
            self._finish(job)
            return
        timer = threading.Timer(self.work, self._finish, args=(job,))
        self._timers.append(timer)
        timer.start()

    def _finish(self, job: dict[str, Any]) -> None:
        with self._lock:
            self.record.done.append({**job, "done_at": time.time()})
            self._change("available")
