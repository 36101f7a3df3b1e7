"""A complete robot program for corral's fleet (the one in docs/robot-client.md).

It connects, reports where it is from its (fake) odometry, obeys move/stop/estop/resume and
sends a checkpoint at each marker it reaches. Replace `Motors` with your robot's own driver.

    pip install websockets        # and corral, or copy src/corral/robot next to this file
    python robot_program.py --url http://corral.local:8080 --name r1 --token "$TOKEN" \
        --marker m1
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

try:
    from corral.robot import RobotClient, RobotRefused
except ImportError:  # corral not installed: the `robot` folder copied next to this file
    from robot import RobotClient, RobotRefused  # type: ignore[no-redef]

log = logging.getLogger("robot")
TICK = 0.1  # seconds between odometry readings (and telemetry while moving)


class Motors:
    """Stand-in for the robot's motor driver and odometry: drives at `speed` m/s."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.running = False
        self.odometer = 0.0  # metres since the last reset
        self.battery = 100.0

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def reset(self) -> None:
        self.odometer = 0.0

    def read(self, seconds: float) -> float:
        """Advance the fake odometry by `seconds` and return the metres travelled so far."""
        if self.running:
            self.odometer += self.speed * seconds
            self.battery = max(0.0, self.battery - 0.01 * seconds)
        return self.odometer


class Robot:
    """Turns corral's commands into motion, and motion into telemetry and checkpoints."""

    def __init__(self, client: RobotClient, motors: Motors, marker: str | None, lane: float):
        self.client = client
        self.motors = motors
        self.marker = marker  # where it stands, if known
        self.lane_length = lane  # metres; a real robot stops when it sees the next marker
        self.moves: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.allowed = asyncio.Event()  # cleared by stop/estop, set again by resume
        self.allowed.set()

    async def on_command(self, command: dict[str, Any]) -> None:
        """Accept a command quickly (it is acknowledged when this returns)."""
        kind = command["kind"]
        if kind == "move":
            start, end = command["lane"]
            self.moves.put_nowait((start, end))
        elif kind in ("stop", "estop"):
            self.allowed.clear()
            self.motors.stop()  # at once: an estop arrives even while we are busy
            log.warning("%s: stopped", kind)
        elif kind == "resume":
            self.allowed.set()
            log.info("resume")
        elif kind == "custom":
            log.info("custom order: %s", command.get("payload"))
        elif kind == "mission":
            log.info("mission %s: go to %s", command.get("mission"), command.get("goal"))

    async def drive(self) -> None:
        """Follow the lanes corral gives, one at a time."""
        await self.client.telemetry(marker=self.marker, battery=self.motors.battery)
        while True:
            start, end = await self.moves.get()
            await self.follow(start, end)

    async def follow(self, start: str, end: str) -> None:
        lane = [start, end]
        self.marker = None
        self.motors.reset()
        while True:
            if not self.allowed.is_set():
                self.motors.stop()
                await self.allowed.wait()
            self.motors.start()
            await asyncio.sleep(TICK)
            travelled = self.motors.read(TICK)
            if travelled >= self.lane_length:
                break
            await self.client.telemetry(
                lane=lane,
                progress=travelled / self.lane_length,
                distance=self.lane_length - travelled,  # to the next marker
                battery=self.motors.battery,
            )
        self.motors.stop()
        self.marker = end
        await self.client.checkpoint(end)  # never lost: queued while offline
        await self.client.telemetry(marker=end, battery=self.motors.battery)
        log.info("reached %s", end)


async def main(args: argparse.Namespace) -> int:
    client = RobotClient(args.url, args.name, args.token, key=args.key)
    robot = Robot(client, Motors(args.speed), args.marker, args.lane_length)
    client.on_command(robot.on_command)
    client.on_connect(lambda welcome: log.info("connected (heartbeat %ss)", welcome["heartbeat"]))
    driver = asyncio.create_task(robot.drive())
    try:
        await client.run()  # reconnects by itself; returns after client.close()
    except RobotRefused as exc:
        log.error("%s: check --name and --token", exc)
        return 2
    finally:
        robot.motors.stop()
        driver.cancel()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A robot of corral's fleet.")
    parser.add_argument("--url", required=True, help="corral's URL, http://host:port")
    parser.add_argument("--name", required=True, help="the robot's registered name")
    parser.add_argument("--token", required=True, help="the robot's token")
    parser.add_argument("--key", help="HMAC key (hex) if registered as signed")
    parser.add_argument("--marker", help="the marker it stands on at start")
    parser.add_argument("--speed", type=float, default=0.5, help="metres per second")
    parser.add_argument("--lane-length", type=float, default=1.0, help="metres per lane")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except KeyboardInterrupt:
        sys.exit(0)
