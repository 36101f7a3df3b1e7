"""edgeECHO sessions: request-to-running latency and bursts of requests, corral vs the seed.

The seed's approach (what its operator does with docker-py): create a network, then create
and start probe, stream and segmentation one after the other, with no readiness wait. corral:
`POST /templates/edgeecho/sessions` (placement, readiness waits, history, reaper). Both run
the same images (the example template's, built once) with count=1000 on the local engine;
each session's delivery is checked from the segmentation server's own count.

Each side is warmed up alike (one session each, finished), then the sequential sessions
alternate seed, corral, seed, ... so a change in the machine's load hits both; then bursts
of 10 and of 50 requests sent at once (each side on its own, seed first): the wall time from
the first request to the last `running` answer and each session's own p50/p95. For the 50
the template's reservation is set to 0.02 CPU (a copy of the example in a temp folder): the
example's 0.25 CPU would queue all but 8 of them on this 2-CPU host, which the seed never does.
A request that fails counts as not delivered, and why is printed under its row (on a stock
dockerd the seed's plain sequence fails past Docker's default address pools, about 30
networks; corral gives each session network a subnet of its own pool).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import structlog
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.edgeecho import build_emulators  # noqa: E402
from tests.support.engines import LOCAL_URL, ensure_local_engine  # noqa: E402
from tests.support.server import ADMIN, ThreadServer  # noqa: E402

from corral.config import Settings  # noqa: E402

COUNT = 1000
SEED_LABEL = "bench.edgeecho-seed"
ROLES = ("probe", "stream", "segmentation")
RESERVATION = "resources: {cpus: 0.25, memory: 64M}"  # the example template's


@dataclass
class Outcome:
    latency: float  # request to every container started
    delivered: bool  # the segmentation server counted COUNT data messages and a terminate


@dataclass
class Result:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    burst_wall: float = 0.0
    burst_latencies: list[float] = field(default_factory=list)
    burst_delivered: int = 0
    burst_total: int = 0
    burst_errors: dict[str, int] = field(default_factory=dict)  # why requests failed

    def quantile(self, q: float) -> float:
        return _quantile(sorted(o.latency for o in self.outcomes), q)

    def burst_quantile(self, q: float) -> float:
        return _quantile(self.burst_latencies, q)

    @property
    def delivered(self) -> int:
        return sum(o.delivered for o in self.outcomes)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def _summary(log: str) -> dict[str, Any]:
    lines = [line for line in log.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


# ---------------------------------------------------------------- the seed's approach


class Seed:
    """The edgeECHO operator's sequence, with docker-py, as the seed wrote it."""

    def __init__(self, images: dict[str, str], warmup_ms: int = 0) -> None:
        self.client = docker.DockerClient(base_url=LOCAL_URL, version="1.41")
        self.api = self.client.api
        self.images = images
        self.warmup_ms = warmup_ms

    def run(self) -> tuple[float, Callable[[], bool]]:
        started = time.perf_counter()
        network = f"network_{secrets.token_hex(3).upper()}"
        labels = {SEED_LABEL: network}
        self.api.create_network(network, driver="bridge", labels=labels)
        envs = {
            "probe": {
                "probe_ip": "probe",
                "probe_port": "12345",
                "count": str(COUNT),
                "warmup_ms": str(self.warmup_ms),
            },
            "stream": {
                "probe_ip": "probe",
                "probe_port": "12345",
                "stream_ip": "stream",
                "stream_port": "12346",
                "plain_stream": "False",
            },
            "segmentation": {"stream_ip": "stream", "stream_port": "12346"},
        }
        ids = {}
        for role in ("probe", "stream", "segmentation"):
            endpoint = self.api.create_endpoint_config(aliases=[role])
            made = self.api.create_container(
                self.images[role],
                environment=envs[role],
                labels=labels,
                host_config=self.api.create_host_config(network_mode=network),
                networking_config=self.api.create_networking_config({network: endpoint}),
            )
            self.api.start(made["Id"])
            ids[role] = made["Id"]
        took = time.perf_counter() - started

        def finish() -> bool:
            """Wait for the end, read the count, remove everything (the seed's cron)."""
            try:
                # The consumers end first (at once when the start raced); a probe left
                # waiting for a stream that never came is removed like the rest.
                for role in ("stream", "segmentation"):
                    self.api.wait(ids[role], timeout=60)
                log = self.api.logs(ids["segmentation"]).decode(errors="replace")
                summary = _summary(log)
                return summary.get("data_messages") == COUNT and summary.get("terminate") is True
            except Exception:
                return False
            finally:
                for container in ids.values():
                    self.api.remove_container(container, force=True)
                self.api.remove_network(network)

        return took, finish


# ---------------------------------------------------------------- corral


class Corral:
    def __init__(self, server: ThreadServer, warmup_ms: int = 0) -> None:
        self.server = server
        self.warmup_ms = warmup_ms

    def run(self) -> tuple[float, Callable[[], bool]]:
        with self.server.client() as api:
            started = time.perf_counter()
            answer = api.post(
                "/templates/edgeecho/sessions",
                json={"params": {"count": COUNT, "warmup_ms": self.warmup_ms}},
                timeout=120,
            )
            took = time.perf_counter() - started
        if answer.status_code != 201:
            raise RuntimeError(f"corral refused a session: {answer.text}")
        session = answer.json()["id"]

        def finish() -> bool:
            """Wait for the end, read the count, remove everything (`DELETE`, as the
            seed's cron removes its containers after the fact)."""
            with self.server.client() as api:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    view = api.get(f"/sessions/{session}").json()
                    if view["state"] not in ("pending", "starting", "running"):
                        break
                    time.sleep(0.1)
                log = api.get(f"/sessions/{session}/services/segmentation/logs").text
                cleaned = api.delete(f"/sessions/{session}", timeout=60)
                if cleaned.status_code != 200 or not cleaned.json()["cleaned_at"]:
                    raise RuntimeError(f"session {session} not cleaned: {cleaned.text}")
            summary = _summary(log)
            return (
                view["state"] == "completed"
                and summary.get("data_messages") == COUNT
                and summary.get("terminate") is True
            )

        return took, finish


# ---------------------------------------------------------------- measuring


def sequential(result: Result, run: Callable[[], tuple[float, Callable[[], bool]]], n: int) -> None:
    for _ in range(n):
        took, finish = run()
        result.outcomes.append(Outcome(took, finish()))


def burst(result: Result, run: Callable[[], tuple[float, Callable[[], bool]]], n: int) -> None:
    """n requests sent at once: each one's latency, the wall time from the first request
    to the last answer, then (not timed) every session's delivery."""
    gate = threading.Barrier(n)
    answers: list[tuple[float, Callable[[], bool]] | Exception] = []
    lock = threading.Lock()

    def client() -> None:
        gate.wait()
        try:
            answer: tuple[float, Callable[[], bool]] | Exception = run()
        except Exception as exc:  # a refused request counts as not delivered
            answer = exc
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=client) for _ in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.burst_wall = time.perf_counter() - started
    ok = [a for a in answers if not isinstance(a, Exception)]
    for failed in (a for a in answers if isinstance(a, Exception)):
        why = (str(failed).splitlines() or [type(failed).__name__])[0][:160]
        result.burst_errors[why] = result.burst_errors.get(why, 0) + 1
    result.burst_latencies = sorted(took for took, _ in ok)
    result.burst_total = n
    delivered: list[bool] = []
    finishing = [threading.Thread(target=lambda f=f: delivered.append(f())) for _, f in ok]
    for t in finishing:
        t.start()
    for t in finishing:
        t.join()
    result.burst_delivered = sum(delivered)


def scenario(
    server: ThreadServer, images: dict[str, str], warmup_ms: int, sessions: int
) -> list[Result]:
    corral, theirs = Result("corral"), Result("seed (sequential, no readiness)")
    corral_run, seed_run = Corral(server, warmup_ms).run, Seed(images, warmup_ms).run
    for run in (seed_run, corral_run):  # warm-up alike: first-use costs on both sides
        run()[1]()
    for _ in range(sessions):  # interleaved, so load hits both alike
        sequential(theirs, seed_run, 1)
        sequential(corral, corral_run, 1)
    return [theirs, corral]


def bursts(server: ThreadServer, images: dict[str, str], sizes: list[int]) -> None:
    print("\nbursts (requests sent at once), probe listens at once")
    print(f"{'n':>3} {'approach':34} {'wall s':>7} {'p50 s':>7} {'p95 s':>7} {'delivered':>10}")
    for size in sizes:
        results = []
        for name, run in (
            ("seed (sequential, no readiness)", Seed(images).run),
            ("corral", Corral(server).run),
        ):
            result = Result(name)
            burst(result, run, size)
            results.append(result)
            q = result.burst_quantile
            print(
                f"{size:>3} {name:34} {result.burst_wall:7.3f} {q(0.5):7.3f} {q(0.95):7.3f} "
                f"{result.burst_delivered:>4}/{result.burst_total:<5}"
            )
            for why, count in result.burst_errors.items():
                print(f"    {count} requests failed: {why}")
        base, ours = results
        print(
            f"{size:>3} ratio corral/seed: wall {ours.burst_wall / base.burst_wall:.2f}x, "
            f"p50 {ours.burst_quantile(0.5) / base.burst_quantile(0.5):.2f}x, "
            f"p95 {ours.burst_quantile(0.95) / base.burst_quantile(0.95):.2f}x"
        )


def report(title: str, results: list[Result]) -> None:
    print(f"\n{title}")
    print(f"{'approach':34} {'p50 s':>7} {'p95 s':>7} {'delivered':>10}")
    for r in results:
        print(
            f"{r.name:34} {r.quantile(0.5):7.3f} {r.quantile(0.95):7.3f} "
            f"{r.delivered:>4}/{len(r.outcomes):<5}"
        )
    base, ours = results
    print(
        f"ratio corral/seed: p50 {ours.quantile(0.5) / base.quantile(0.5):.2f}x, "
        f"p95 {ours.quantile(0.95) / base.quantile(0.95):.2f}x"
    )


def _template_copy(example: Path, into: Path) -> tuple[Path, dict[str, str]]:
    """The example's folder with the template's reservation at 0.02 CPU (so a burst of 50
    fits on this host), and the image of each role as the template names it."""
    folder = into / "edgeecho"
    shutil.copytree(example, folder)
    path = folder / "edgeecho.yml"
    text = path.read_text()
    if RESERVATION not in text:
        raise RuntimeError(f"the template's reservation is no longer {RESERVATION!r}")
    path.write_text(text.replace(RESERVATION, "resources: {cpus: 0.02, memory: 64M}"))
    services = yaml.safe_load(text)["services"]
    return folder, {role: str(services[role]["image"]) for role in ROLES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=20, help="sequential sessions each")
    parser.add_argument(
        "--bursts", default="10,50", help="sizes of the bursts of requests sent at once"
    )
    parser.add_argument(
        "--warmup-ms", type=int, default=1000, help="probe start-up in the second scenario"
    )
    args = parser.parse_args()
    sizes = [int(n) for n in args.bursts.split(",") if n.strip()]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    ensure_local_engine()
    example = build_emulators()
    print(
        f"edgeECHO sessions, count={COUNT} segmented, local engine, "
        f"{dt.datetime.now():%Y-%m-%d %H:%M}"
    )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as home:
        templates, images = _template_copy(example, Path(home))
        builder = docker.DockerClient(base_url=LOCAL_URL, version="1.41")
        for role, image in images.items():  # both approaches use the same, prebuilt images
            builder.images.build(
                path=str(templates / "emulators"),
                dockerfile=f"{role}.Dockerfile",
                tag=image,
                rm=True,
            )
        settings = Settings(
            home=Path(home) / "corral",
            bootstrap_token=ADMIN,
            local_docker_url=LOCAL_URL,
            templates_dir=templates,
            # Clean-up by DELETE once a session is read (both sides clean after the fact,
            # never in the middle of a burst).
            session_grace_seconds=3600,
        )
        with ThreadServer(settings) as server:
            for warmup in (0, args.warmup_ms):
                results = scenario(server, images, warmup, args.sessions)
                report(f"probe listens after {warmup} ms", results)
            bursts(server, images, sizes)


if __name__ == "__main__":
    main()
