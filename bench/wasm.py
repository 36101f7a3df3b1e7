"""Wasm devices: one function call through a `corral agent` against in-process wasmtime.

Measures, in one run, the latency of calling `double(21)` (examples/wasm/modules/double.wat)
five ways, and of a two-step chain:

- in-process wasmtime (the baseline): the module compiled once; per call a fresh Store
  configured as the agent configures its own (fuel, epoch deadline, memory limit), a fresh
  Instance, the call. Also, for context, a warm instance (one Store and Instance reused)
  and corral's own `Runtime.call` in-process (what the agent runs per call: a fresh Store
  plus a WASI config and a Linker with the host functions);
- the agent directly: `GET /{deployment}/modules/double/double?x=21` on one `corral agent`
  process, then `GET` of the resultUrl it answers with (the device-level cost);
- through corral: `POST /execute/{deployment}` to `corral serve` (a separate process, so the
  bench's client does not share a GIL with the server), which calls the agent and follows
  the result URL (the end-to-end cost);
- a chain double -> add_ten over two agents, `POST /execute/{deployment}` with x=16 (42).

The three HTTP measurements are interleaved (one of each per round) on persistent
keep-alive `httpx.Client`s and every answer's value is checked; a bare `GET /health` (agent)
and `GET /healthz` (corral) give one HTTP round trip for context. The agents are registered
by hand (`POST /file/device/discovery/register`, no mDNS); corral runs with SQLite in a temp
dir, log level warning. Everything listens on 127.0.0.1 free ports and is stopped by PID at
the end, also on error. A default run takes about 3 minutes on 2 cores, most of it in the
HTTP round trips (see bench/RESULTS.md).

    .venv/bin/python bench/wasm.py                  # 500 calls each, 20 warm-up
    .venv/bin/python bench/wasm.py --calls 2000 --warmup 50
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import wasmtime

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.agents import AgentProcess, unique_name, wat_bytes  # noqa: E402
from tests.support.server import ADMIN, ServeProcess, wait_until  # noqa: E402

from corral.agent.runtime import TICK, Runtime  # noqa: E402

# The agent's defaults (corral.agent.settings.AgentSettings): fuel, memory cap, call time.
FUEL = 1_000_000_000
MEMORY_MB = 64
CALL_TIMEOUT = 10.0

Stats = tuple[float, float, float]  # p50, p95, p99 in ms


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def stats(values: list[float]) -> Stats:
    ordered = sorted(values)
    return percentile(ordered, 50), percentile(ordered, 95), percentile(ordered, 99)


def timed(fn: Callable[[], object], calls: int, warmup: int) -> list[float]:
    """Milliseconds of each of `calls` calls of `fn`, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- in-process wasmtime -----------------------------------------------------------------


def in_process(calls: int, warmup: int) -> dict[str, list[float]]:
    """The baseline and its two context rows, each checked to answer 42."""
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    module = wasmtime.Module(engine, wat_bytes("double"))
    deadline = max(1, math.ceil(CALL_TIMEOUT / TICK))
    stop = threading.Event()

    def tick() -> None:  # as the agent's runtime does: the epoch moves every TICK
        while not stop.wait(TICK):
            engine.increment_epoch()

    ticker = threading.Thread(target=tick, name="bench-epoch", daemon=True)
    ticker.start()

    def fresh() -> None:
        store = wasmtime.Store(engine)
        store.set_fuel(FUEL)
        store.set_epoch_deadline(deadline)
        store.set_limits(memory_size=MEMORY_MB * 2**20)
        instance = wasmtime.Instance(store, module, [])
        double = instance.exports(store)["double"]
        assert isinstance(double, wasmtime.Func)
        if double(store, 21) != 42:
            raise RuntimeError("in-process double(21) is not 42")

    warm_store = wasmtime.Store(engine)
    warm_store.set_fuel(FUEL)
    warm_store.set_epoch_deadline(10**9)  # ~115 days of ticks: never reached here
    warm_store.set_limits(memory_size=MEMORY_MB * 2**20)
    warm_double = wasmtime.Instance(warm_store, module, []).exports(warm_store)["double"]
    assert isinstance(warm_double, wasmtime.Func)

    def warm() -> None:
        if warm_double(warm_store, 21) != 42:
            raise RuntimeError("warm double(21) is not 42")

    runtime = Runtime(fuel=FUEL, memory_mb=MEMORY_MB, call_timeout=CALL_TIMEOUT)
    compiled = runtime.compile(wat_bytes("double"))

    def agent_runtime() -> None:
        if runtime.call(compiled, "double", [21], names=["x"]).value != 42:
            raise RuntimeError("Runtime.call double(21) is not 42")

    try:
        return {
            "fresh": timed(fresh, calls, warmup),
            "warm": timed(warm, calls, warmup),
            "runtime": timed(agent_runtime, calls, warmup),
        }
    finally:
        stop.set()
        ticker.join()
        runtime.close()


# --- corral and its agents -----------------------------------------------------------------


def expect(response: httpx.Response, *codes: int) -> Any:
    if response.status_code not in codes:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: HTTP {response.status_code}: "
            f"{response.text[:300]}"
        )
    if "json" not in response.headers.get("content-type", ""):
        return response.text
    return response.json()


def upload(api: httpx.Client, name: str, param: str) -> None:
    files = {"module": (f"{name}.wasm", bytes(wat_bytes(name)))}
    module = expect(api.post("/file/module", data={"name": name}, files=files), 200, 201)
    described = {name: {"method": "GET", "parameters": [{"name": param, "type": "integer"}]}}
    expect(api.post(f"/file/module/{module['id']}/upload", json=described), 200)


def deploy(api: httpx.Client, name: str, steps: list[tuple[str, str]]) -> str:
    """A manifest of (device, module) steps, each module's function named as the module."""
    sequence = [{"device": d, "module": m, "func": m} for d, m in steps]
    created = api.post("/file/manifest", json={"name": name, "sequence": sequence})
    deployment = str(expect(created, 201))
    answer = expect(api.post(f"/file/manifest/{deployment}"), 200)
    statuses = {a["status"] for a in answer["deviceResponses"].values()}
    if statuses != {200}:
        raise RuntimeError(f"deploying {name}: device answers {answer['deviceResponses']}")
    return deployment


def through_corral(
    home: Path, calls: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(the interleaved measurements, informational round trips), in ms."""
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_MDNS_ENABLED": "false",
        "CORRAL_LOG_LEVEL": "warning",
    }
    serve = ServeProcess(home / "serve", env)
    agents: list[AgentProcess] = []
    try:
        serve.start()
        headers = {"Authorization": f"Bearer {ADMIN}"}
        with (
            httpx.Client(base_url=serve.url, headers=headers, timeout=30) as api,
            httpx.Client(timeout=30) as device,
        ):
            for _ in range(2):
                name = unique_name("bench")
                token = expect(api.post("/tokens", json={"name": name, "role": "device"}), 201)
                agent = AgentProcess(home / name, name, token=token["token"])
                agents.append(agent)
                agent.start()
                registered = api.post(
                    "/file/device/discovery/register",
                    json={"name": name, "port": agent.port, "addresses": ["127.0.0.1"]},
                )
                expect(registered, 204)

            def described() -> bool:
                found = {d["name"]: d for d in expect(api.get("/file/device"), 200)}
                return all(found.get(a.name, {}).get("description") for a in agents)

            wait_until(described, "both agents described", 30)
            upload(api, "double", "x")
            upload(api, "add_ten", "x")
            first, second = agents
            one = deploy(api, "bench-double", [(first.name, "double")])
            chain = deploy(api, "bench-chain", [(first.name, "double"), (second.name, "add_ten")])
            function_url = f"{first.url}/{one}/modules/double/double"

            def direct() -> None:
                answer = expect(device.get(function_url, params={"x": 21}), 200)
                result = expect(device.get(answer["resultUrl"]), 200)
                if result["result"] != ["42", None]:
                    raise RuntimeError(f"the agent answered {result['result']!r}")

            def execute() -> None:
                answer = expect(api.post(f"/execute/{one}", json={"x": 21}), 200)
                if answer["result"] != ["42", None]:
                    raise RuntimeError(f"/execute answered {answer['result']!r}")

            def chained() -> None:
                answer = expect(api.post(f"/execute/{chain}", json={"x": 16}), 200)
                if answer["result"] != ["42", None] or answer["isInFailover"]:
                    raise RuntimeError(f"the chain answered {answer!r}")

            for _ in range(warmup):
                direct()
                execute()
                chained()
            measured: dict[str, list[float]] = {"direct": [], "execute": [], "chain": []}
            steps = (("direct", direct), ("execute", execute), ("chain", chained))
            for _ in range(calls):
                for key, fn in steps:
                    start = time.perf_counter_ns()
                    fn()
                    measured[key].append((time.perf_counter_ns() - start) / 1e6)

            # Informational: one bare HTTP round trip to each server (at most 200 calls).
            health = f"{first.url}/health"
            few = min(calls, 200)
            rtt = {
                "agent /health": timed(lambda: expect(device.get(health), 200), few, warmup),
                "corral /healthz": timed(lambda: expect(api.get("/healthz"), 200), few, warmup),
            }
            return measured, rtt
    finally:
        serve.stop()
        for agent in agents:
            agent.stop()


# --- report ------------------------------------------------------------------------------


def row(label: str, values: list[float]) -> Stats:
    p50, p95, p99 = stats(values)
    print(f"{label:58} {p50:9.3f} {p95:9.3f} {p99:9.3f} {len(values):6}")
    return p50, p95, p99


def ratio(label: str, ours: Stats, base: Stats) -> None:
    parts = ", ".join(
        f"{name} {a / b:.1f}x" for name, a, b in zip(("p50", "p95", "p99"), ours, base, strict=True)
    )
    print(f"  {label:56} {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls before each")
    args = parser.parse_args()
    if args.calls < 1 or args.warmup < 0:
        parser.error("--calls must be at least 1 and --warmup at least 0")

    now = dt.datetime.now(dt.UTC)
    print(f"double(21) through a corral agent vs in-process wasmtime, {now:%Y-%m-%d %H:%M} UTC")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {cores} CPUs (nproc), {cpu_model()}, {platform.platform()}")
    print(
        f"Python {platform.python_version()}, wasmtime {importlib.metadata.version('wasmtime')}, "
        f"httpx {httpx.__version__}; {args.calls} calls each after {args.warmup} warm-up"
    )
    with open("/proc/loadavg", encoding="utf-8") as loadavg:
        print(f"load average at start: {' '.join(loadavg.read().split()[:3])}")

    local = in_process(args.calls, args.warmup)
    with tempfile.TemporaryDirectory(prefix="corral-bench-wasm-") as home:
        remote, rtt = through_corral(Path(home), args.calls, args.warmup)

    print()
    print(f"{'what (ms per call)':58} {'p50':>9} {'p95':>9} {'p99':>9} {'n':>6}")
    base = row("in-process wasmtime: fresh Store + Instance (baseline)", local["fresh"])
    warm = row("in-process wasmtime: warm instance (context)", local["warm"])
    runtime = row("in-process corral Runtime.call: + WASI, Linker (context)", local["runtime"])
    direct = row("agent directly: GET function + GET resultUrl", remote["direct"])
    execute = row("corral: POST /execute, one step", remote["execute"])
    chain = row("corral: POST /execute, chain double -> add_ten, 2 agents", remote["chain"])
    row("one HTTP round trip: GET agent /health (context)", rtt["agent /health"])
    row("one HTTP round trip: GET corral /healthz (context)", rtt["corral /healthz"])
    print()
    print("ratios")
    ratio("agent directly / in-process baseline", direct, base)
    ratio("corral /execute / in-process baseline", execute, base)
    ratio("corral /execute / agent directly", execute, direct)
    ratio("chain /execute / one-step /execute", chain, execute)
    ratio("Runtime.call / in-process baseline", runtime, base)
    ratio("in-process baseline / warm instance", base, warm)


if __name__ == "__main__":
    main()
