"""Robot links: corral's memory over many robot connect/close cycles, and what it says after.

corral runs as `corral serve` (its own process, SQLite in a temp dir, log level warning).
`--robots` robots are registered; then `--cycles` times in all, from `--parallel` workers at
once, a robot opens `/fleet/ws`, says hello, waits for its welcome, sends one telemetry, and
leaves: every other cycle with a clean close, the rest by cutting the TCP link (no closing
handshake), as a robot that loses its Wi-Fi does. Printed every `--every` cycles: corral's
RSS (VmRSS) and peak (VmHWM) in MB, and cycles per second. At the end: how many robots
`GET /fleet/robots` still calls connected (a leak of links shows up here as well as in RSS).

Run (about a minute on 2 cores):
    .venv/bin/python bench/robot_links.py
    .venv/bin/python bench/robot_links.py --cycles 10000 --robots 300 --parallel 8
To measure another copy of corral, point PYTHONPATH at its src/ (the server inherits it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fleet import memory_mb  # noqa: E402
from tests.support.server import ADMIN, ServeProcess  # noqa: E402

HEADERS = {"Authorization": f"Bearer {ADMIN}"}


async def cycle(url: str, name: str, token: str, cut: bool) -> None:
    ws = await websockets.connect(
        url.replace("http://", "ws://") + "/fleet/ws",
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
    )
    await ws.send(json.dumps({"type": "hello", "robot": name}))
    while json.loads(await ws.recv())["type"] != "welcome":
        pass
    await ws.send(json.dumps({"type": "telemetry", "marker": None, "lane": None, "battery": 50}))
    if cut:
        ws.transport.abort()
    else:
        await ws.close()


async def run(args: argparse.Namespace, serve: ServeProcess) -> None:
    assert serve.proc is not None
    pid = serve.proc.pid
    async with httpx.AsyncClient(base_url=serve.url, headers=HEADERS, timeout=60) as api:
        tokens = {}
        for i in range(args.robots):
            answer = await api.post("/fleet/robots", json={"name": f"bot{i}"})
            answer.raise_for_status()
            tokens[f"bot{i}"] = answer.json()["token"]
        names = sorted(tokens)
        rss, peak = memory_mb(pid)
        print(f"{'cycles':>7} {'RSS MB':>7} {'peak MB':>8} {'cycles/s':>9}")
        print(f"{0:>7} {rss:>7.1f} {peak:>8.1f} {'':>9}")
        done = 0
        lock = asyncio.Lock()
        started = time.monotonic()
        window = started

        async def worker(offset: int) -> None:
            nonlocal done, window
            while True:
                async with lock:
                    if done >= args.cycles:
                        return
                    number = done
                    done += 1
                name = names[(number + offset) % len(names)]
                await cycle(serve.url, name, tokens[name], cut=number % 2 == 1)
                if (number + 1) % args.every == 0:
                    now = time.monotonic()
                    rss, peak = memory_mb(pid)
                    rate = args.every / (now - window)
                    window = now
                    print(f"{number + 1:>7} {rss:>7.1f} {peak:>8.1f} {rate:>9.0f}", flush=True)

        await asyncio.gather(*(worker(i) for i in range(args.parallel)))
        took = time.monotonic() - started
        await asyncio.sleep(1.0)  # the last sockets' ends reach corral
        robots = (await api.get("/fleet/robots")).json()
        connected = sum(1 for r in robots if r["connected"])
        rss, peak = memory_mb(pid)
        print(f"{args.cycles} cycles in {took:.0f} s; after 1 s: RSS {rss:.1f} MB, peak {peak:.1f}")
        print(f"robots connected after all left: {connected} of {len(robots)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--robots", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--every", type=int, default=1000)
    args = parser.parse_args()
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, Python {sys.version}")
    with tempfile.TemporaryDirectory() as home:
        env = {
            "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
            "CORRAL_LOCAL_DOCKER_URL": "",
            "CORRAL_MDNS_ENABLED": "false",
            "CORRAL_LOG_LEVEL": "warning",
            "CORRAL_ROBOT_HEARTBEAT_SECONDS": "600",
        }
        serve = ServeProcess(Path(home), env).start()
        try:
            asyncio.run(run(args, serve))
        finally:
            serve.stop()


if __name__ == "__main__":
    main()
