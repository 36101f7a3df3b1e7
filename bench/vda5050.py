"""VDA 5050: corral's CPU, memory and order-to-first-motion latency with 100, 500 and 1,000
simulated vehicles, each publishing its state at 1 Hz and on every event and its
visualization at 10 Hz.

Each fleet size gets a fresh private Mosquitto (anonymous, on a free loopback port) and a
fresh `corral serve` (its own process, SQLite in a temp dir, log level warning, VDA 5050
on that broker). The vehicles are registered in one `PUT /fleet/vda5050/vehicles` (a
vehicles file's request), then run by corral's simulator (`corral.robot.vda_sim`, the one
`corral sim vda` runs: each vehicle its own MQTT connection and last will, the vehicles of
a process driven from one loop) in `--workers` processes of their own (by default as
`corral sim vda` spreads them) on the same cores, on a 50x40 grid (2,000 markers, 1 m
apart): vehicle i stands on an even column, so the marker to its right is free. Each knows
its position from the start, so every one publishes its visualization at 10 Hz from the
start. After all are online and `--warmup` seconds, for `--seconds`:

- corral's CPU (utime+stime from /proc/PID/stat, % of one core) and RSS (VmRSS; peak
  VmHWM); the simulator's CPU (all its processes), the rest of the machine's (/proc/stat)
  and the load average, since all share the machine's cores;
- the VDA 5050 messages corral handled per second (`corral_vda5050_messages_total`,
  direction in, on /metrics at the start and the end of the window) against what the
  vehicles were to send (N x 11 per second, plus the states on events), and the
  visualizations superseded (a newer one of the same vehicle came before corral read it);
  corral's RSS at the window's start and end (flat, or growing with a backlog);
- **order to first motion** for `--sample` vehicles, one after another, 1 s apart:
  from just before `POST /fleet/missions` (to the free marker on its right) to the order
  reaching the broker (the bench subscribes to the sample's order and visualization
  topics), and to the vehicle's first visualization away from its start (the simulator
  publishes it every 0.1 s). All in this process, one clock.

The floor: the same simulator alone on a broker (no corral), sent the same one-lane
order by the bench, `--sample` times: from the publish to the first visualization away from
its start. corral's share of the latency is the difference.

With `--replicas 2` each size runs again on two `corral serve` sharing a private PostgreSQL
(the first leads): every replica subscribes to the visualizations through the MQTT shared
subscription, so each takes a share; the counts and CPU are summed over the replicas and
each one's share printed.

Run (about 5 minutes with the defaults):
    .venv/bin/python bench/vda5050.py
    .venv/bin/python bench/vda5050.py --vehicles 100,500,1000 --seconds 30 --sample 20
    .venv/bin/python bench/vda5050.py --vehicles 1000 --replicas 0,2
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fleet import (  # noqa: E402
    cpu_seconds,
    machine_jiffies,
    memory_mb,
    pct,
    start_replicas,
    versions,
)
from tests.support.postgres import PrivatePostgres  # noqa: E402
from tests.support.private_brokers import PrivateMosquitto  # noqa: E402
from tests.support.server import ADMIN, ServeProcess  # noqa: E402

from corral.model.fleet_map import grid_map, lane_key  # noqa: E402
from corral.robot.vda_sim import SimVehicle, VehicleProcesses, default_procs  # noqa: E402

COLUMNS, ROWS = 50, 40
MANUFACTURER = "bench"
MESSAGES = re.compile(
    r'^corral_vda5050_messages_total\{direction="in",outcome="(\w+)",replica="\w*",'
    r'topic="(\w+)"\} (\S+)$',
    re.M,
)


def spots(n: int) -> list[tuple[str, str, float, float]]:
    """(serial, marker, x, y) of vehicle i: on the even columns, row by row."""
    out = []
    for i in range(n):
        row, col = divmod(i, COLUMNS // 2)
        out.append((f"v{i:04d}", f"r{row}c{2 * col}", 2.0 * col, float(row)))
    return out


# ----------------------------------------------------------------------------- latency


@dataclass
class Watch:
    """The sample vehicles' orders and first motion, as the broker passes them on."""

    start: dict[str, tuple[float, float]]  # serial -> its start position
    order_at: dict[str, float] = field(default_factory=dict)
    moved_at: dict[str, float] = field(default_factory=dict)

    async def run(self, url: str, ready: asyncio.Event) -> None:
        port = int(url.rsplit(":", 1)[1])
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-watch-probe") as client:
            for serial in self.start:
                for topic in ("order", "visualization"):
                    await client.subscribe(f"uagv/v2/{MANUFACTURER}/{serial}/{topic}")
            ready.set()
            async for message in client.messages:
                now = time.monotonic()
                serial, name = str(message.topic).split("/")[3:5]
                if name == "order":
                    self.order_at.setdefault(serial, now)
                elif serial in self.order_at and serial not in self.moved_at:
                    payload = message.payload if isinstance(message.payload, bytes) else b"{}"
                    where = json.loads(payload).get("agvPosition") or {}
                    if (where.get("x"), where.get("y")) != self.start[serial]:
                        self.moved_at[serial] = now


# ----------------------------------------------------------------------------- floor


def _order(fmap: Any, i: int, here: str, there: str) -> dict[str, Any]:
    """A one-lane order from `here` to `there`, both released, as corral would send it."""
    return {
        "headerId": i,
        "timestamp": "2026-01-01T00:00:00.000Z",
        "version": "2.1.0",
        "manufacturer": MANUFACTURER,
        "serialNumber": "floor",
        "orderId": f"floor-{i}",
        "orderUpdateId": 0,
        "nodes": [
            {
                "nodeId": node,
                "sequenceId": 2 * k,
                "released": True,
                "nodePosition": {
                    "x": fmap.markers[node].x,
                    "y": fmap.markers[node].y,
                    "mapId": "bench",
                },
                "actions": [],
            }
            for k, node in enumerate((here, there))
        ],
        "edges": [
            {
                "edgeId": lane_key(here, there),
                "sequenceId": 1,
                "released": True,
                "startNodeId": here,
                "endNodeId": there,
                "actions": [],
            }
        ],
    }


async def floor(workdir: Path, sample: int) -> list[float]:
    """The simulator alone: the bench publishes a one-lane order, then waits for the first
    visualization away from its start; back and forth, `sample` times."""
    broker = PrivateMosquitto(workdir / "floor").start()
    stop = asyncio.Event()
    sim = SimVehicle(
        broker.url, MANUFACTURER, "floor", "r0c0", speed=1.0, position=(0.0, 0.0), map_id="bench"
    )
    driving = asyncio.create_task(sim.run(stop))
    fmap = grid_map("bench", 2, 1)
    times: list[float] = []
    seen: list[tuple[float, tuple[Any, Any]]] = []  # (arrival, position) of each visualization

    async def read(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b"{}"
            where = json.loads(payload).get("agvPosition") or {}
            seen.append((time.monotonic(), (where.get("x"), where.get("y"))))

    try:
        port = int(broker.url.rsplit(":", 1)[1])
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-floor-probe") as client:
            await client.subscribe(f"uagv/v2/{MANUFACTURER}/floor/visualization")
            reading = asyncio.create_task(read(client))
            await asyncio.sleep(1.0)
            for i in range(sample):
                here, there = ("r0c0", "r0c1") if i % 2 == 0 else ("r0c1", "r0c0")
                start = sim.position
                order = _order(fmap, i, here, there)
                sent = time.monotonic()
                await client.publish(f"uagv/v2/{MANUFACTURER}/floor/order", json.dumps(order))
                deadline = sent + 10
                while time.monotonic() < deadline:
                    moved = [t for t, where in seen if t > sent and where != start]
                    if moved:
                        times.append((moved[0] - sent) * 1000)
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(2.5)  # it drives the 1 m lane at 1 m/s and stops
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    finally:
        stop.set()
        await asyncio.sleep(0.3)
        driving.cancel()
        await asyncio.gather(driving, return_exceptions=True)
        broker.stop()
    return times


# ----------------------------------------------------------------------------- a fleet size


@dataclass
class Row:
    n: int
    replicas: int = 0  # 0: one corral on SQLite; k: k replicas on one PostgreSQL
    per_replica: list[float] = field(default_factory=list)  # CPU % of each
    vis_per_replica: list[float] = field(default_factory=list)  # visualizations taken, per s
    register_s: float = 0.0
    online_s: float = 0.0  # until all were online (or the limit, if not)
    online: int = 0  # how many were online then
    online_end: int = 0  # and at the end of the window
    corral_cpu: float = 0.0
    rss_start: float = 0.0  # at the window's start
    rss: float = 0.0
    peak: float = 0.0
    procs: int = 0  # the simulator's processes
    workers_cpu: float = 0.0
    others_cpu: float = 0.0
    load: float = 0.0
    handled: dict[str, float] = field(default_factory=dict)  # outcome/topic -> per second
    sent: dict[str, float] = field(default_factory=dict)  # topic -> per second, by the vehicles
    to_order: list[float] = field(default_factory=list)
    to_motion: list[float] = field(default_factory=list)
    missed: int = 0


def in_counts(text: str) -> dict[str, float]:
    return {f"{m[2]}:{m[1]}": float(m[3]) for m in MESSAGES.finditer(text)}


async def fleet(n: int, workdir: Path, args: argparse.Namespace, replicas: int = 0) -> Row:
    row = Row(n, replicas)
    broker = PrivateMosquitto(workdir / f"broker-{n}-{replicas}").start()
    vda = {
        "CORRAL_BROKERS": json.dumps({"vda": broker.url}),
        "CORRAL_VDA5050_BROKER": "vda",
        "CORRAL_VDA5050_VISUALIZATION": "false" if args.states_only else "true",
    }
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_MDNS_ENABLED": "false",
        "CORRAL_LOG_LEVEL": "warning",
    } | vda
    pg: PrivatePostgres | None = None
    servers: list[ServeProcess] = []
    if replicas:  # the first leads; each takes its share of the visualizations
        pg = await asyncio.to_thread(PrivatePostgres().start)
        home = workdir / f"corral-{n}-{replicas}"
        servers = await asyncio.to_thread(start_replicas, home, replicas, pg.url, vda)
    else:
        servers = [await asyncio.to_thread(ServeProcess(workdir / f"corral-{n}", env).start)]
    serve = servers[0]
    pids = [s.proc.pid for s in servers if s.proc is not None]
    workers: VehicleProcesses | None = None
    vehicles = spots(n)
    api = httpx.AsyncClient(
        base_url=serve.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120
    )
    try:
        fmap = grid_map("bench", COLUMNS, ROWS).as_dict()
        assert (await api.post("/fleet/maps", json=fmap)).status_code == 201
        body = {
            "vehicles": [
                {"name": s, "manufacturer": MANUFACTURER, "serial_number": s}
                | {"map": "bench", "marker": m}
                for s, m, _, _ in vehicles
            ]
        }
        began = time.monotonic()
        answer = await api.put("/fleet/vda5050/vehicles", json=body)
        row.register_s = time.monotonic() - began
        assert answer.status_code == 200, answer.text
        began = time.monotonic()
        sims = [
            SimVehicle(
                broker.url,
                MANUFACTURER,
                serial,
                marker,
                speed=1.0,
                state_every=1.0,
                visualization_every=0.1,
                position=(x, y),
                map_id="bench",
            )
            for serial, marker, x, y in vehicles
        ]
        row.procs = args.workers or default_procs(n)
        workers = await asyncio.to_thread(VehicleProcesses(sims, row.procs).start)
        sim_pids = workers.pids

        async def online() -> int:
            robots = (await api.get("/fleet/robots")).json()
            return sum(r["state"] == "online" for r in robots)

        row.online = await online()
        while row.online < n and time.monotonic() - began < args.online:
            await asyncio.sleep(0.5)
            row.online = await online()
        row.online_s = time.monotonic() - began
        await asyncio.sleep(args.warmup)
        sample = vehicles[:: max(1, n // args.sample)][: args.sample]
        watch = Watch({s: (x, y) for s, _, x, y in sample})
        ready = asyncio.Event()
        watching = asyncio.create_task(watch.run(broker.url, ready))
        await asyncio.wait_for(ready.wait(), 30)
        # the window
        before = [in_counts(await _metrics(s.url)) for s in servers]
        row.rss_start = sum(memory_mb(p)[0] for p in pids)
        cpus0, busy0 = [cpu_seconds(p) for p in pids], machine_jiffies()
        work0 = sum(cpu_seconds(p) for p in sim_pids)
        me0 = cpu_seconds(os.getpid())
        sent0 = await asyncio.to_thread(workers.sent)
        t0 = time.monotonic()
        posted: dict[str, float] = {}
        spacing = min(1.0, args.seconds / (len(sample) + 1))
        for serial, marker, _, _ in sample:
            row_no, col = marker[1:].split("c")
            goal = f"r{row_no}c{int(col) + 1}"
            posted[serial] = time.monotonic()
            made = await api.post("/fleet/missions", json={"robot": serial, "goal": goal})
            assert made.status_code == 201, made.text
            await asyncio.sleep(spacing)
        await asyncio.sleep(max(0.0, args.seconds - (time.monotonic() - t0)))
        elapsed = time.monotonic() - t0
        sent1 = await asyncio.to_thread(workers.sent)
        row.sent = {k: (sent1.get(k, 0) - sent0.get(k, 0)) / elapsed for k in sent1}
        cpus1, busy1 = [cpu_seconds(p) for p in pids], machine_jiffies()
        work1 = sum(cpu_seconds(p) for p in sim_pids)
        me1 = cpu_seconds(os.getpid())
        after = [in_counts(await _metrics(s.url)) for s in servers]
        row.online_end = await online()
        row.load = os.getloadavg()[0]
        row.per_replica = [100 * (b - a) / elapsed for a, b in zip(cpus0, cpus1, strict=True)]
        row.corral_cpu = sum(row.per_replica)
        row.workers_cpu = 100 * (work1 - work0) / elapsed
        busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 100 * (os.cpu_count() or 1)
        row.others_cpu = max(
            0.0, busy - row.corral_cpu - row.workers_cpu - 100 * (me1 - me0) / elapsed
        )
        memory = [memory_mb(p) for p in pids]
        row.rss, row.peak = sum(m[0] for m in memory), sum(m[1] for m in memory)
        row.vis_per_replica = [
            (a.get("visualization:ok", 0.0) - b.get("visualization:ok", 0.0)) / elapsed
            for b, a in zip(before, after, strict=True)
        ]
        keys = {k for counts in after for k in counts}
        row.handled = {
            k: sum(a.get(k, 0.0) - b.get(k, 0.0) for b, a in zip(before, after, strict=True))
            / elapsed
            for k in keys
        }
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        for serial, at in posted.items():
            if serial in watch.order_at:
                row.to_order.append((watch.order_at[serial] - at) * 1000)
            if serial in watch.moved_at:
                row.to_motion.append((watch.moved_at[serial] - at) * 1000)
            else:
                row.missed += 1
    finally:
        if workers is not None:
            await asyncio.to_thread(workers.stop)
        await api.aclose()
        for server in servers:
            await asyncio.to_thread(server.stop)
        if pg is not None:
            pg.stop()
        broker.stop()
    return row


async def _metrics(url: str) -> str:
    """One replica's /metrics (each counts what it took itself)."""
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
    ) as api:
        return (await api.get("/metrics")).text


# ----------------------------------------------------------------------------- report


def label(r: Row) -> str:
    return f"{r.n}/{r.replicas}r" if r.replicas else str(r.n)


def ms(values: list[float]) -> str:
    return " ".join(f"{pct(values, q):7.0f}" for q in (0.5, 0.95)) + f" {max(values or [0]):7.0f}"


def report(rows: list[Row], base: list[float], args: argparse.Namespace) -> None:
    print(
        "\n1. corral with N vehicles (state 1 Hz + on events, visualization 10 Hz), "
        f"{args.seconds:g} s window"
    )
    print(
        f"{'vehicles':>8} {'register s':>10} {'online s':>8} {'online':>6} {'at end':>6} "
        f"{'corral CPU':>10} {'RSS MB start':>12} {'end':>5} "
        f"{'peak':>5} {'sim procs':>9} {'vehicles CPU':>12} {'others':>6} {'load avg':>8}"
    )
    for r in rows:
        print(
            f"{label(r):>8} {r.register_s:>10.1f} {r.online_s:>8.1f} {r.online:>6} "
            f"{r.online_end:>6} "
            f"{r.corral_cpu:>9.0f}% "
            f"{r.rss_start:>12.0f} {r.rss:>5.0f} {r.peak:>5.0f} "
            f"{r.procs:>9} {r.workers_cpu:>11.0f}% "
            f"{r.others_cpu:>5.0f}% "
            f"{r.load:>8.2f}"
        )
    print(
        "\n2. VDA 5050 messages per second: sent by the vehicles, taken in by corral "
        "(target: N x 10 visualization, N x 1 state + events; superseded: visualizations a "
        "newer one of the same vehicle replaced before corral read them)"
    )
    print(
        f"{'vehicles':>8} {'vis. target':>11} {'sent':>6} {'taken':>6} {'state target':>12} "
        f"{'sent':>6} {'taken':>6} {'other ok':>8} {'superseded':>10} {'not ok':>6}"
    )
    for r in rows:
        vis = r.handled.get("visualization:ok", 0.0)
        state = r.handled.get("state:ok", 0.0)
        other = max(0.0, sum(v for k, v in r.handled.items() if k.endswith(":ok")) - vis - state)
        superseded = r.handled.get("visualization:superseded", 0.0)
        bad = sum(v for k, v in r.handled.items() if not k.endswith(":ok")) - superseded
        vis_sent, state_sent = r.sent.get("visualization", 0.0), r.sent.get("state", 0.0)
        print(
            f"{label(r):>8} {10 * r.n:>11} {vis_sent:>6.0f} {vis:>6.0f} {r.n:>12} "
            f"{state_sent:>6.0f} {state:>6.0f} {other:>8.1f} {superseded:>10.0f} {bad:>6.1f}"
        )
    print(
        f"\n3. order to first motion (ms), {args.sample} vehicles per size, "
        "one a second during the window"
    )
    print(
        f"{'vehicles':>8} {'to order p50':>12} {'p95':>7} {'max':>7} {'to motion p50':>13} "
        f"{'p95':>7} {'max':>7} {'ratio p50':>9} {'missed':>6}"
    )
    floor50 = pct(base, 0.5)
    print(f"{'floor':>8} {'':>12} {'':>7} {'':>7} {ms(base):>29} {'1.00x':>9} {0:>6}")
    for r in rows:
        ratio = pct(r.to_motion, 0.5) / floor50 if r.to_motion and floor50 else float("nan")
        times = f"{ms(r.to_order):>28} {ms(r.to_motion):>29}"
        print(f"{label(r):>8} {times} {ratio:>8.2f}x {r.missed:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vehicles", default="100,500,1000", help="fleet sizes, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per size")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    parser.add_argument("--sample", type=int, default=20, help="missions timed per size")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes running the vehicles (default: the simulator's, one per 500 "
        "vehicles, at most one per core)",
    )
    parser.add_argument(
        "--states-only",
        action="store_true",
        help="corral takes in states only (vda5050_visualization off); vehicles send both",
    )
    parser.add_argument(
        "--online", type=float, default=120.0, help="seconds to wait for all to be online"
    )
    parser.add_argument(
        "--replicas",
        default="0",
        help="0: one corral on SQLite; k: k replicas on a private PostgreSQL, each taking "
        "its share of the visualizations (MQTT shared subscription); comma-separated",
    )
    args = parser.parse_args()
    replicas = [int(x) for x in args.replicas.split(",") if x.strip()]
    sizes = [int(x) for x in args.vehicles.split(",") if x.strip()]
    if max(sizes) > COLUMNS * ROWS // 2:
        parser.error(f"at most {COLUMNS * ROWS // 2} vehicles fit the grid")
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    takes = "states only (vda5050_visualization off)" if args.states_only else "all messages"
    print(
        f"VDA 5050: corral with simulated vehicles, {now:%Y-%m-%d %H:%M} UTC; corral takes {takes}"
    )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start"
    )
    print(versions(), flush=True)
    with tempfile.TemporaryDirectory(prefix="corral-bench-vda-") as tmp:
        workdir = Path(tmp)
        base = asyncio.run(floor(workdir, args.sample))
        print(f"  [floor: first motion p50 {pct(base, 0.5):.0f} ms]", flush=True)
        rows = []
        for n in sizes:
            for k in replicas:
                rows.append(asyncio.run(fleet(n, workdir, args, k)))
                _progress(rows[-1])
    report(rows, base, args)
    print(
        f"\nwhole run: {time.monotonic() - started:.0f} s, "
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )


def _progress(r: Row) -> None:
    shares = ""
    if r.replicas:
        cpus = " + ".join(f"{c:.0f}" for c in r.per_replica)
        vis = " + ".join(f"{v:.0f}" for v in r.vis_per_replica)
        shares = f" ({cpus}; visualizations taken per replica {vis}/s)"
    print(
        f"  [{label(r)} vehicles: corral {r.corral_cpu:.0f}% CPU{shares}, "
        f"{r.rss_start:.0f}-{r.rss:.0f} MB, "
        f"first motion p50 {pct(r.to_motion, 0.5):.0f} ms; "
        f"simulator {r.workers_cpu:.0f}% CPU in {r.procs} processes, "
        f"{r.sent.get('visualization', 0.0):.0f} visualizations/s sent]",
        flush=True,
    )


if __name__ == "__main__":
    main()
