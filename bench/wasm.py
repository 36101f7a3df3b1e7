"""Wasm devices: one function call through a `corral agent` against in-process wasmtime.

Measures, in one run, the latency of calling `double(21)` (examples/wasm/modules/double.wat)
five ways, and of a two-step chain:

- in-process wasmtime (the baseline): the module compiled once; per call a fresh Store
  configured as the agent configures its own (fuel, epoch deadline, memory limit), a fresh
  Instance, the call. Also, for context, a warm instance (one Store and Instance reused)
  and corral's own `Runtime.call` in-process (what the agent runs per call: a fresh Store
  with a WASI config, instantiated from the module linked once);
- the agent directly: `GET /{deployment}/modules/double/double?x=21` on one `corral agent`
  process, then `GET` of the resultUrl it answers with (the device-level cost);
- through corral: `POST /execute/{deployment}` to `corral serve` (a separate process, so the
  bench's client does not share a GIL with the server), which calls the agent and follows
  the result URL (the end-to-end cost);
- a chain double -> add_ten over two agents, `POST /execute/{deployment}` with x=16 (42).

Floors, measured in the same rounds: two bare HTTP round trips to the agent (`GET /health`
twice) and one to corral (`GET /healthz`). The agent's call is compared with two bare round
trips plus the in-process call, and `/execute` with one corral round trip plus the agent
called directly (sums of p50s). All HTTP measurements are interleaved (one of each per
round) on persistent keep-alive `httpx.Client`s and every answer's value is checked.
`--before DIR` starts a second `corral serve` and agents from another source tree (an older
checkout's `src`, via PYTHONPATH) and interleaves its three calls too: before and after in
one run. The agents are registered by hand (`POST /file/device/discovery/register`, no
mDNS); corral runs with SQLite in a temp dir, log level warning. Everything listens on
127.0.0.1 free ports and is stopped by PID at the end, also on error. A default run takes
a few minutes on 2 cores, most of it in the HTTP round trips (see bench/RESULTS.md).

    .venv/bin/python bench/wasm.py                  # 500 calls each, 20 warm-up
    .venv/bin/python bench/wasm.py --calls 2000 --warmup 50
    .venv/bin/python bench/wasm.py --calls 300 --before /tmp/corral-old/src
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


class Setup:
    """`corral serve` and two `corral agent`s from one source tree, a one-step and a
    two-step deployment, and the calls the bench times against them."""

    def __init__(self, home: Path, source: Path | None) -> None:
        self.env = {
            "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
            "CORRAL_LOCAL_DOCKER_URL": "",
            "CORRAL_MDNS_ENABLED": "false",
            "CORRAL_LOG_LEVEL": "warning",
        }
        if source is not None:  # the processes import corral from there
            self.env["PYTHONPATH"] = str(source)
        self.home = home
        self.serve = ServeProcess(home / "serve", self.env)
        self.agents: list[AgentProcess] = []
        self.api = httpx.Client(timeout=30)
        self.device = httpx.Client(timeout=30)

    def start(self) -> None:
        self.serve.start()
        self.api = httpx.Client(
            base_url=self.serve.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
        )
        api = self.api
        for _ in range(2):
            name = unique_name("bench")
            token = expect(api.post("/tokens", json={"name": name, "role": "device"}), 201)
            agent = AgentProcess(self.home / name, name, token=token["token"], env=self.env)
            self.agents.append(agent)
            agent.start()
            registered = api.post(
                "/file/device/discovery/register",
                json={"name": name, "port": agent.port, "addresses": ["127.0.0.1"]},
            )
            expect(registered, 204)

        def described() -> bool:
            found = {d["name"]: d for d in expect(api.get("/file/device"), 200)}
            return all(found.get(a.name, {}).get("description") for a in self.agents)

        wait_until(described, "both agents described", 30)
        upload(api, "double", "x")
        upload(api, "add_ten", "x")
        first, second = self.agents
        self.one = deploy(api, "bench-double", [(first.name, "double")])
        self.chain = deploy(api, "bench-chain", [(first.name, "double"), (second.name, "add_ten")])
        self.function_url = f"{first.url}/{self.one}/modules/double/double"
        self.health_url = f"{first.url}/health"

    def direct(self) -> None:
        answer = expect(self.device.get(self.function_url, params={"x": 21}), 200)
        result = expect(self.device.get(answer["resultUrl"]), 200)
        if result["result"] != ["42", None]:
            raise RuntimeError(f"the agent answered {result['result']!r}")

    def execute(self) -> None:
        answer = expect(self.api.post(f"/execute/{self.one}", json={"x": 21}), 200)
        if answer["result"] != ["42", None]:
            raise RuntimeError(f"/execute answered {answer['result']!r}")

    def chained(self) -> None:
        answer = expect(self.api.post(f"/execute/{self.chain}", json={"x": 16}), 200)
        if answer["result"] != ["42", None] or answer["isInFailover"]:
            raise RuntimeError(f"the chain answered {answer!r}")

    def agent_round_trips(self) -> None:
        """Two bare HTTP round trips to the agent: the floor of its call's two."""
        expect(self.device.get(self.health_url), 200)
        expect(self.device.get(self.health_url), 200)

    def corral_round_trip(self) -> None:
        expect(self.api.get("/healthz"), 200)

    def stop(self) -> None:
        self.api.close()
        self.device.close()
        self.serve.stop()
        for agent in self.agents:
            agent.stop()


def through_corral(
    home: Path, calls: int, warmup: int, before: Path | None
) -> dict[str, list[float]]:
    """Every HTTP measurement in ms, interleaved: one of each per round. With `before`, the
    same calls against a second set of processes running that source tree."""
    setups = {"": Setup(home / "after", None)}
    if before is not None:
        setups[" (before)"] = Setup(home / "before", before)
    try:
        for setup in setups.values():
            setup.start()
        steps: list[tuple[str, Callable[[], None]]] = []
        for tag, setup in setups.items():
            steps += [
                (f"direct{tag}", setup.direct),
                (f"execute{tag}", setup.execute),
                (f"chain{tag}", setup.chained),
            ]
        ours = setups[""]
        steps += [("agent rtt x2", ours.agent_round_trips), ("corral rtt", ours.corral_round_trip)]
        for _ in range(warmup):
            for _key, fn in steps:
                fn()
        measured: dict[str, list[float]] = {key: [] for key, _ in steps}
        for _ in range(calls):
            for key, fn in steps:
                start = time.perf_counter_ns()
                fn()
                measured[key].append((time.perf_counter_ns() - start) / 1e6)
        return measured
    finally:
        for setup in setups.values():
            setup.stop()


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
    parser.add_argument(
        "--before", type=Path, help="another source tree whose processes are timed alongside"
    )
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
        remote = through_corral(Path(home), args.calls, args.warmup, args.before)
    with open("/proc/loadavg", encoding="utf-8") as loadavg:
        print(f"load average at the end: {' '.join(loadavg.read().split()[:3])}")

    print()
    print(f"{'what (ms per call)':58} {'p50':>9} {'p95':>9} {'p99':>9} {'n':>6}")
    base = row("in-process wasmtime: fresh Store + Instance (baseline)", local["fresh"])
    warm = row("in-process wasmtime: warm instance (context)", local["warm"])
    runtime = row("in-process corral Runtime.call: + WASI, limits (context)", local["runtime"])
    direct = row("agent directly: GET function + GET resultUrl", remote["direct"])
    execute = row("corral: POST /execute, one step", remote["execute"])
    chain = row("corral: POST /execute, chain double -> add_ten, 2 agents", remote["chain"])
    two_rtt = row("two bare HTTP round trips: GET agent /health x2", remote["agent rtt x2"])
    rtt = row("one bare HTTP round trip: GET corral /healthz", remote["corral rtt"])
    if args.before is not None:
        old_direct = row("before: agent directly", remote["direct (before)"])
        old_execute = row("before: corral /execute, one step", remote["execute (before)"])
        old_chain = row("before: corral /execute, chain", remote["chain (before)"])
    agent_floor = two_rtt[0] + base[0]
    execute_floor = rtt[0] + direct[0]
    print()
    print("floors (sums of the p50s of rows measured in this run)")
    print(f"  {'agent call floor: two bare round trips + in-process call':56} {agent_floor:9.3f}")
    print(f"  {'/execute floor: corral round trip + agent directly':56} {execute_floor:9.3f}")
    print()
    print("ratios")
    for label, ours, floor in (
        ("agent directly / its floor (target 1.5x)", direct[0], agent_floor),
        ("/execute one step / its floor (target 1.5x)", execute[0], execute_floor),
    ):
        print(f"  {label:56} p50 {ours / floor:.2f}x")
    ratio("agent directly / in-process baseline", direct, base)
    ratio("corral /execute / in-process baseline", execute, base)
    ratio("corral /execute / agent directly", execute, direct)
    ratio("chain /execute / one-step /execute", chain, execute)
    ratio("Runtime.call / in-process baseline", runtime, base)
    ratio("in-process baseline / warm instance", base, warm)
    if args.before is not None:
        ratio("before / after: agent directly", old_direct, direct)
        ratio("before / after: /execute one step", old_execute, execute)
        ratio("before / after: /execute chain", old_chain, chain)


if __name__ == "__main__":
    main()
