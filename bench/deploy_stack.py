"""Time from nothing to the Go1 twin's 7 containers running on two Docker engines (edge, robot).

Compares corral (POST /stacks?wait=true) with the seed's docker-py loop, docker-compose and a floor.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import structlog
import yaml
from docker.errors import APIError, NotFound
from docker.types import IPAMConfig, IPAMPool

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.engines import (  # noqa: E402
    LOCAL_URL,
    ROBOT_URL,
    RobotEngine,
    build_busybox_image,
    ensure_swarm,
)
from tests.support.server import ADMIN, ThreadServer  # noqa: E402

from corral.config import Settings  # noqa: E402

EXAMPLE = ROOT / "examples" / "go1"
API_VERSION = "1.41"
HOST_URLS = {"edge": LOCAL_URL, "robot": ROBOT_URL}
TWIN_NET = "bench-twin"  # the peers' overlay, made once
TWIN_SUBNET = "10.78.0.0/16"
CORRAL_SUBNET = "10.79.0.0/16"  # corral's own per-stack overlay (not go1's 10.77.0.0/16)
STACK2 = "bench"  # corral, two hosts, 7 services
STACK1 = "edge5"  # corral, one host, the 5 edge services
STACK_DEPS = "benchdeps"  # corral, two hosts, with the example's depends_on
COMPOSE_PROJECT = "benchdc"
SEED_PREFIX = "bench-seed-"
FLOOR_PREFIX = "bench-floor-"
ORDERED_PREFIX = "bench-waves-"
PREFIXES = (SEED_PREFIX, FLOOR_PREFIX, ORDERED_PREFIX)
PROBE_NET = "bench-probe"
PROBE_SUBNET = "10.80.0.0/16"
ATTEMPTS = 3


@dataclass(frozen=True)
class Service:
    name: str
    role: str  # the host label role == edge / robot, which is also the host's name here
    depends: tuple[str, ...]

    @property
    def image(self) -> str:
        return f"go1/{self.name}:1"


@dataclass
class Approach:
    name: str
    times: list[float] = field(default_factory=list)
    retries: int = 0


# ---------------------------------------------------------------------- the stack
def example_services() -> list[Service]:
    """The example's services in file order, edge ones first (the seed's order)."""
    data = yaml.safe_load((EXAMPLE / "compose.yml").read_text())
    found = []
    for name, svc in data["services"].items():
        constraints = svc["deploy"]["placement"]["constraints"]
        role = next(c.split("==")[1].strip() for c in constraints if "node.labels.role" in c)
        found.append(Service(name, role, tuple(svc.get("depends_on") or ())))
    return sorted(found, key=lambda s: s.role != "edge")


def stack_yaml(services: list[Service], network: dict[str, Any], placement: bool = True) -> str:
    """The benchmark variant: no build:, no ports, no healthcheck, depends_on service_started."""
    names = {s.name for s in services}
    out: dict[str, Any] = {}
    for s in services:
        svc: dict[str, Any] = {"image": s.image, "restart": "always"}
        deps = [d for d in s.depends if d in names]
        if deps:
            svc["depends_on"] = {d: {"condition": "service_started"} for d in deps}
        svc["networks"] = ["digital-twin-service"]
        if placement:
            svc["deploy"] = {"placement": {"constraints": [f"node.labels.role == {s.role}"]}}
        out[s.name] = svc
    doc = {"services": out, "networks": {"digital-twin-service": network}}
    return yaml.safe_dump(doc, sort_keys=False)


def overlay_net() -> dict[str, Any]:
    return {
        "driver": "overlay",
        "attachable": True,
        "ipam": {"config": [{"subnet": CORRAL_SUBNET}]},
    }


# ---------------------------------------------------------------------- engines
def client(url: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=url, version=API_VERSION, timeout=120)


def sh(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def prepare(services: list[Service], clients: dict[str, docker.DockerClient]) -> None:
    """Robot engine, busybox, swarm, the go1 images on both hosts, the peers' overlay.

    Cheap when all is there already; run before every round because other users of the
    shared test bed may remove images or leave the swarm.
    """
    robot = RobotEngine().setup()
    for url in HOST_URLS.values():
        build_busybox_image(url)
    ensure_swarm(robot)
    for url in HOST_URLS.values():
        for s in services:
            if sh("docker", "-H", url, "image", "inspect", s.image).returncode == 0:
                continue
            built = sh(
                "docker", "-H", url, "build", "-q", "-t", s.image, str(EXAMPLE / "images" / s.name)
            )
            if built.returncode != 0:
                raise RuntimeError(f"build of {s.image} on {url} failed: {built.stderr}")
    edge = clients["edge"]
    if not edge.networks.list(names=[TWIN_NET]):
        edge.networks.create(
            TWIN_NET,
            driver="overlay",
            attachable=True,
            ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=TWIN_SUBNET)]),
        )


def remove_named(clients: dict[str, docker.DockerClient], prefix: str) -> None:
    for c in clients.values():
        for found in c.containers.list(all=True, filters={"name": prefix}):
            if found.name.startswith(prefix):
                with contextlib.suppress(NotFound):
                    found.remove(force=True)


def verify(clients: dict[str, docker.DockerClient], expected: dict[str, str]) -> None:
    """Every container name in `expected` runs on its host (name -> host)."""
    for name, host in expected.items():
        attrs = clients[host].api.inspect_container(name)
        if not attrs["State"]["Running"]:
            raise RuntimeError(f"{name} on {host} is {attrs['State']['Status']}")


# ---------------------------------------------------------------------- approaches
def seed_round(services: list[Service], clients: dict[str, docker.DockerClient]) -> float:
    started = time.perf_counter()
    for s in services:
        clients[s.role].containers.run(
            s.image,
            name=SEED_PREFIX + s.name,
            detach=True,
            network=TWIN_NET,
            restart_policy={"Name": "always"},
        )
    took = time.perf_counter() - started
    verify(clients, {SEED_PREFIX + s.name: s.role for s in services})
    return took


def floor_round(services: list[Service], clients: dict[str, docker.DockerClient]) -> float:
    errors: list[BaseException] = []
    gate = threading.Barrier(len(services) + 1)

    def one(s: Service) -> None:
        api = clients[s.role].api
        gate.wait()
        try:
            created = api.create_container(
                s.image,
                name=FLOOR_PREFIX + s.name,
                host_config=api.create_host_config(network_mode=TWIN_NET),
            )
            api.start(created["Id"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(s,)) for s in services]
    for t in threads:
        t.start()
    gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    took = time.perf_counter() - started
    if errors:
        raise errors[0]
    verify(clients, {FLOOR_PREFIX + s.name: s.role for s in services})
    return took


def compose_round(
    compose_file: Path, edge: list[Service], clients: dict[str, docker.DockerClient]
) -> float:
    started = time.perf_counter()
    up = sh("docker-compose", "-p", COMPOSE_PROJECT, "-f", str(compose_file), "up", "-d")
    took = time.perf_counter() - started
    if up.returncode != 0:
        raise RuntimeError(f"docker-compose up failed: {up.stderr}")
    verify(clients, {f"{COMPOSE_PROJECT}_{s.name}_1": "edge" for s in edge})
    return took


def compose_down(compose_file: Path) -> None:
    sh("docker-compose", "-p", COMPOSE_PROJECT, "-f", str(compose_file), "down", "-t", "1")


@dataclass
class Phases:
    """Where one corral round's time went, from corral's event timestamps (seconds)."""

    apply: float  # POST sent -> stack.created (parse, host checks, store)
    first_wave: float  # -> first container.created (observe, overlay, wave 1: ros-master)
    second_wave: float  # -> last container.created (wave 2: the other 6 in parallel)
    finish: float  # -> answer received (save slots, view, HTTP)


def corral_round(
    api: httpx.Client,
    name: str,
    text: str,
    expected: dict[str, str],
    clients: dict[str, docker.DockerClient],
) -> tuple[float, Phases | None]:
    body = {"name": name, "file": text, "env": {}, "base_dir": str(EXAMPLE)}
    sent = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    answer = api.post("/stacks", params={"wait": "true"}, json=body, timeout=300)
    took = time.perf_counter() - started
    received = dt.datetime.now(dt.UTC)
    if answer.status_code not in (200, 201):
        raise RuntimeError(f"POST /stacks {name}: {answer.status_code} {answer.text}")
    slots = {s["service"]: s for s in answer.json()["slots"]}
    wrong = {
        svc: (s["state"], s["host"], s["reason"])
        for svc, s in slots.items()
        if s["state"] != "running" or s["host"] != expected.get(svc)
    }
    if wrong or set(slots) != set(expected):
        raise RuntimeError(f"corral {name}: not all running where wanted: {wrong or slots}")
    verify(clients, {f"{name}-{svc}-1": host for svc, host in expected.items()})
    return took, phases(api, name, sent, received)


def phases(api: httpx.Client, name: str, sent: dt.datetime, received: dt.datetime) -> Phases | None:
    params = {"resource": f"stack/{name}*", "since": sent.isoformat(), "limit": 1000}
    events = api.get("/events", params=params).json()
    times = {}
    created = []
    for e in events:
        if not (e["resource"] == f"stack/{name}" or e["resource"].startswith(f"stack/{name}/")):
            continue
        moment = dt.datetime.fromisoformat(e["time"])
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        if e["kind"] == "stack.created":
            times["stack"] = moment
        elif e["kind"] == "container.created":
            created.append(moment)
    if "stack" not in times or not created:
        return None
    first, last = min(created), max(created)
    return Phases(
        apply=(times["stack"] - sent).total_seconds(),
        first_wave=(first - times["stack"]).total_seconds(),
        second_wave=(last - first).total_seconds(),
        finish=(received - last).total_seconds(),
    )


def corral_down(api: httpx.Client, name: str, clients: dict[str, docker.DockerClient]) -> None:
    """DELETE the stack, then wait until its network is really gone (a swarm may hold an
    overlay a while after its containers), so that no round reuses the last one's."""
    gone = api.delete(f"/stacks/{name}", timeout=300)
    if gone.status_code not in (200, 404):
        raise RuntimeError(f"DELETE /stacks/{name}: {gone.status_code} {gone.text}")
    deadline = time.monotonic() + 120
    for c in clients.values():
        while True:
            left = c.networks.list(filters={"label": f"corral.stack={name}"})
            if not left:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"network {left[0].name} of stack {name} stays")
            for net in left:
                with contextlib.suppress(NotFound, APIError):
                    net.remove()
            time.sleep(0.5)


def overlay_round(clients: dict[str, docker.DockerClient]) -> float:
    """Informational: one attachable overlay network create on the manager."""
    edge = clients["edge"]
    started = time.perf_counter()
    net = edge.networks.create(
        PROBE_NET,
        driver="overlay",
        attachable=True,
        ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=PROBE_SUBNET)]),
    )
    took = time.perf_counter() - started
    net.remove()
    return took


def ordered_floor_round(services: list[Service], clients: dict[str, docker.DockerClient]) -> float:
    """Informational: the floor in depends_on order: ros-master, then the rest in parallel."""
    first = [s for s in services if not s.depends]
    rest = [s for s in services if s.depends]
    started = time.perf_counter()
    for wave in (first, rest):
        errors: list[BaseException] = []

        def one(s: Service, errors: list[BaseException] = errors) -> None:
            api = clients[s.role].api
            try:
                created = api.create_container(
                    s.image,
                    name=ORDERED_PREFIX + s.name,
                    host_config=api.create_host_config(network_mode=TWIN_NET),
                )
                api.start(created["Id"])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(s,)) for s in wave]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    took = time.perf_counter() - started
    verify(clients, {ORDERED_PREFIX + s.name: s.role for s in services})
    return took


# ---------------------------------------------------------------------- driver
def attempt(
    approach: Approach,
    run: Callable[[], float],
    clean: Callable[[], None],
    reprepare: Callable[[], None],
) -> None:
    """One timed round; on failure clean up, prepare again and retry (shared test bed)."""
    for tries in range(ATTEMPTS):
        try:
            approach.times.append(run())
            clean()
            return
        except Exception as exc:
            approach.retries += 1
            print(f"  {approach.name}: round failed ({exc!r:.300}); retrying", file=sys.stderr)
            with contextlib.suppress(Exception):
                clean()
            if tries == ATTEMPTS - 1:
                raise
            time.sleep(2)
            reprepare()


@contextlib.contextmanager
def corral_server(home: Path, clients: dict[str, docker.DockerClient]) -> Iterator[httpx.Client]:
    settings = Settings(
        home=home,
        bootstrap_token=ADMIN,
        local_docker_url="",
        engine_networks=["127.0.0.0/8", "10.231.0.0/24"],
    )
    with ThreadServer(settings) as server, server.client() as api:
        hosts = {
            "hosts": [
                {"name": "edge", "url": LOCAL_URL, "labels": {"role": "edge"}},
                {"name": "robot", "url": ROBOT_URL, "labels": {"role": "robot"}, "insecure": True},
            ]
        }
        answer = api.put("/hosts", json=hosts)
        answer.raise_for_status()
        for stale in (STACK2, STACK1):  # from an interrupted run with this home: none
            with contextlib.suppress(Exception):
                corral_down(api, stale, clients)
        try:
            yield api
        finally:
            for stack in (STACK2, STACK1):
                with contextlib.suppress(Exception):
                    corral_down(api, stack, clients)


def wait_reachable(api: httpx.Client, timeout: float = 60) -> None:
    """Both hosts reachable and in the swarm as corral sees them (after a re-prepare)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = 0
        for name in HOST_URLS:
            host = api.post(f"/hosts/{name}/refresh").json()
            facts = host.get("facts") or {}
            ok += bool(host.get("reachable")) and facts.get("swarm_role") in ("manager", "worker")
        if ok == len(HOST_URLS):
            return
        time.sleep(1)
    raise RuntimeError("corral does not see both hosts reachable in the swarm")


def cleanup(clients: dict[str, docker.DockerClient]) -> None:
    """Remove the peers' containers and networks (images and the swarm stay)."""
    for prefix in PREFIXES:
        remove_named(clients, prefix)
    edge = clients["edge"]
    for name in (TWIN_NET, PROBE_NET):
        for _ in range(60):  # the worker may hold the overlay's attachment a moment
            try:
                edge.networks.get(name).remove()
            except NotFound:
                break
            except APIError:
                time.sleep(0.5)
    for c in clients.values():
        c.close()


def stats(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), min(times)


def report(
    corral: Approach,
    corral1: Approach,
    peers: list[tuple[Approach, Approach]],
    floor: Approach,
    extras: list[Approach],
    phase_log: list[Phases],
) -> None:
    """`peers` pairs each peer with the corral run it is compared to; `extras` have no ratio."""
    rows = [corral, corral1, *(p for p, _ in peers), *extras]
    print()
    header = f"{'approach':<46} {'median s':>9} {'min s':>8}  ratio (median)"
    print(header)
    print("-" * (len(header) + 16))
    for a in rows:
        med, low = stats(a.times)
        base = next((b for p, b in peers if p is a), None)
        if base is not None:
            ratio = f"{med / stats(base.times)[0]:.2f}x {base.name.split(',')[0]}"
            if base is corral1:
                ratio += " (1 host)"
        else:
            ratio = f"corral/floor {med / stats(floor.times)[0]:.2f}" if a is corral else ""
            ratio = "(informational)" if a in extras else ratio
        print(f"{a.name:<46} {med:>9.3f} {low:>8.3f}  {ratio}")
    c_med, c_min = stats(corral.times)
    f_med, f_min = stats(floor.times)
    print()
    for peer, base in peers:
        print(
            f"{peer.name} / {base.name}: median {stats(peer.times)[0] / stats(base.times)[0]:.2f}"
            f", min {stats(peer.times)[1] / stats(base.times)[1]:.2f}"
        )
    print(f"corral / floor: median {c_med / f_med:.2f}, min {c_min / f_min:.2f}")
    print()
    print("raw per-round seconds:")
    for a in rows:
        extra = f"   (failed and retried {a.retries}x)" if a.retries else ""
        print(f"  {a.name:<46} " + " ".join(f"{t:.3f}" for t in a.times) + extra)
    if phase_log:
        print()
        print("corral with depends_on: phases from its event timestamps (s): median | per round")
        for part in ("apply", "first_wave", "second_wave", "finish"):
            values = [getattr(p, part) for p in phase_log]
            each = " ".join(f"{v:.3f}" for v in values)
            print(f"  {part:<12} {statistics.median(values):.3f} | {each}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds: int = args.rounds
    if shutil.which("docker-compose") is None:
        print("installing docker-compose (Debian's 1.29)...", file=sys.stderr)
        subprocess.run(
            ["apt-get", "install", "-y", "docker-compose"], check=True, capture_output=True
        )

    services = example_services()
    edge = [s for s in services if s.role == "edge"]
    expected2 = {s.name: s.role for s in services}
    expected1 = {s.name: "edge" for s in edge}
    # The seed's stack has no start order (nor do the seed's loop and the floor): the
    # headline row deploys it so; a second row keeps the example's depends_on.
    flat = [dataclasses.replace(s, depends=()) for s in services]
    text2 = stack_yaml(flat, overlay_net())
    text_deps = stack_yaml(services, overlay_net())
    text1 = stack_yaml(edge, {"driver": "bridge"})
    clients = {host: client(url) for host, url in HOST_URLS.items()}
    print(
        f"{platform.node()}: {platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores; {rounds} rounds",
        file=sys.stderr,
    )

    def reprepare() -> None:
        prepare(services, clients)

    print("preparing engines, swarm, images, overlay...", file=sys.stderr)
    reprepare()
    for prefix in PREFIXES:
        remove_named(clients, prefix)

    corral = Approach("corral, 2 hosts, 7 services (POST wait=true)")
    seed = Approach("seed: docker-py containers.run, sequential")
    floor = Approach("floor: docker-py create+start, 7 threads")
    compose = Approach("docker-compose up -d, 1 host, 5 services")
    corral1 = Approach("corral, 1 host, 5 services (POST wait=true)")
    waves = Approach("floor in depends_on order (1, then 6 threads)")
    corral_deps = Approach("corral, same stack with depends_on ros-master")
    overlay = Approach("one overlay network create (docker-py)")
    phase_log: list[Phases] = []

    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        compose_file = Path(tmp) / "compose-edge.yml"
        compose_file.write_text(stack_yaml(edge, {"driver": "bridge"}, placement=False))
        compose_down(compose_file)
        # corral logs at info as `corral serve` does, to a file rather than the console.
        log_file = (Path(tmp) / "corral.log").open("w")
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=log_file))
        with corral_server(Path(tmp) / "home", clients) as api:
            wait_reachable(api)

            def reprepare_corral() -> None:
                reprepare()
                wait_reachable(api)

            for n in range(rounds):
                print(f"round {n + 1}/{rounds}: corral", file=sys.stderr)

                def run2() -> float:
                    return corral_round(api, STACK2, text2, expected2, clients)[0]

                attempt(corral, run2, lambda: corral_down(api, STACK2, clients), reprepare_corral)

                def run_deps() -> float:
                    took, ph = corral_round(api, STACK_DEPS, text_deps, expected2, clients)
                    if ph is not None:
                        phase_log.append(ph)
                    return took

                attempt(
                    corral_deps,
                    run_deps,
                    lambda: corral_down(api, STACK_DEPS, clients),
                    reprepare_corral,
                )

                def run1() -> float:
                    return corral_round(api, STACK1, text1, expected1, clients)[0]

                attempt(corral1, run1, lambda: corral_down(api, STACK1, clients), reprepare_corral)
        for n in range(rounds):
            print(f"round {n + 1}/{rounds}: seed, floors, docker-compose", file=sys.stderr)
            reprepare()
            attempt(
                seed,
                lambda: seed_round(services, clients),
                lambda: remove_named(clients, SEED_PREFIX),
                reprepare,
            )
            attempt(
                floor,
                lambda: floor_round(services, clients),
                lambda: remove_named(clients, FLOOR_PREFIX),
                reprepare,
            )
            attempt(
                compose,
                lambda: compose_round(compose_file, edge, clients),
                lambda: compose_down(compose_file),
                reprepare,
            )
            attempt(
                waves,
                lambda: ordered_floor_round(services, clients),
                lambda: remove_named(clients, ORDERED_PREFIX),
                reprepare,
            )
            attempt(overlay, lambda: overlay_round(clients), lambda: None, reprepare)
        compose_down(compose_file)
        log_file.close()

    cleanup(clients)
    peers = [(seed, corral), (floor, corral), (compose, corral1)]
    report(corral, corral1, peers, floor, [corral_deps, waves, overlay], phase_log)
    d_med, w_med = stats(corral_deps.times)[0], stats(waves.times)[0]
    print(f"corral with depends_on / floor in depends_on order: median {d_med / w_med:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
