"""The fleet through faults: robots whose connections are cut again and again mid-route,
and `corral serve` SIGKILLed in the middle of the missions then restarted on the same
port. Every robot reaches its goal, no two ever share a marker or lane, and every command
ends acknowledged.
"""

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from tests.integration.test_fleet import Occupancy
from tests.support.server import ADMIN, ServeProcess, run_cli

from corral.model.fleet_map import grid_map
from corral.robot.sim import run_fleet


async def _missions(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (await api.get("/fleet/missions")).json()
    return found


def test_cut_connections_and_a_killed_corral_lose_no_mission(tmp_path: Path) -> None:
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_ROBOT_HEARTBEAT_SECONDS": "3",
    }
    serve = ServeProcess(tmp_path, env).start()
    fmap = grid_map("crash", 8, 8).as_dict()
    starts = ["r1c0", "r3c0", "r5c0", "r0c2", "r0c4", "r0c6"]
    goals = ["r1c7", "r3c7", "r5c7", "r7c2", "r7c4", "r7c6"]
    occupancy = Occupancy()
    headers = {"Authorization": f"Bearer {ADMIN}"}

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=serve.url, headers=headers, timeout=30) as api:
            assert (await api.post("/fleet/maps", json=fmap)).status_code == 201
            sim = await run_fleet(
                serve.url,
                ADMIN,
                fmap,
                len(starts),
                prefix="c",
                speed=3.0,
                rate=10.0,
                start_markers=starts,
                disconnect_every=1.0,
                record=occupancy.record,
                seed=3,
            )
            try:
                for i, goal in enumerate(goals, start=1):
                    answer = await api.post(
                        "/fleet/missions", json={"robot": f"c-{i}", "goal": goal}
                    )
                    assert answer.status_code == 201, answer.text
                await asyncio.sleep(1.2)
                assert serve.proc is not None
                os.kill(serve.proc.pid, signal.SIGKILL)
                serve.stop()
                await asyncio.sleep(1.0)  # robots finish their lanes and queue checkpoints
                await asyncio.to_thread(serve.start)
                deadline = time.monotonic() + 120
                while True:
                    missions = await _missions(api)
                    if len(missions) == len(goals) and all(m["state"] == "done" for m in missions):
                        break
                    assert time.monotonic() < deadline, missions
                    await asyncio.sleep(0.25)
                stats = {name: s.reconnects for name, s in sim.stats.items()}
            finally:
                await sim.stop()
            robots = {r["name"]: r for r in (await api.get("/fleet/robots")).json()}
            for i, goal in enumerate(goals, start=1):
                assert robots[f"c-{i}"]["marker"] == goal
                log = (await api.get(f"/fleet/robots/c-{i}/commands/log")).json()
                assert log, "each robot got commands"
                assert all(c["acked_at"] for c in log), log
            return stats

    reconnects = asyncio.run(scenario())
    assert all(count >= 2 for count in reconnects.values()), reconnects
    assert occupancy.violations == []
    events = run_cli(serve, "events", "--kind", "mission.done")
    assert events.stdout.count("mission.done") == len(goals)
    listed = run_cli(serve, "mission", "ls", "--state", "done")
    assert listed.returncode == 0
    assert listed.stdout.count(" done ") == len(goals)
    serve.stop()
