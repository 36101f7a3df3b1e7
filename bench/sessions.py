"""edgeECHO sessions: request-to-running latency and sessions per minute, corral vs the seed.

The seed's approach (what its operator does with docker-py): create a network, then create
and start probe, stream and segmentation one after the other, with no readiness wait. corral:
`POST /templates/edgeecho/sessions` (placement, readiness waits, history, reaper). Both run
the same images with count=1000 on the local engine; each session's delivery is checked
from the segmentation server's own count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.edgeecho import build_emulators  # noqa: E402
from tests.support.engines import LOCAL_URL, ensure_local_engine  # noqa: E402
from tests.support.server import ADMIN, ThreadServer  # noqa: E402

from corral.config import Settings  # noqa: E402

COUNT = 1000
SEED_LABEL = "bench.edgeecho-seed"
IMAGES = {role: f"corral/edgeecho-{role}:2" for role in ("probe", "stream", "segmentation")}


@dataclass
class Outcome:
    latency: float  # request to every container started
    delivered: bool  # the segmentation server counted COUNT data messages and a terminate


@dataclass
class Result:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    per_minute: float = 0.0
    burst_delivered: int = 0
    burst_total: int = 0

    def quantile(self, q: float) -> float:
        values = sorted(o.latency for o in self.outcomes)
        index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
        return values[index]

    @property
    def delivered(self) -> int:
        return sum(o.delivered for o in self.outcomes)


def _summary(log: str) -> dict[str, Any]:
    lines = [line for line in log.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


# ---------------------------------------------------------------- the seed's approach


class Seed:
    """The edgeECHO operator's sequence, with docker-py, as the seed wrote it."""

    def __init__(self, warmup_ms: int = 0) -> None:
        self.client = docker.DockerClient(base_url=LOCAL_URL, version="1.41")
        self.api = self.client.api
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
                IMAGES[role],
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
            with self.server.client() as api:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    view = api.get(f"/sessions/{session}").json()
                    if view["cleaned_at"]:
                        break
                    time.sleep(0.1)
                log = api.get(f"/sessions/{session}/services/segmentation/logs").text
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


def burst(
    result: Result, run: Callable[[], tuple[float, Callable[[], bool]]], n: int, workers: int
) -> None:
    """n sessions from `workers` clients; sessions per minute from first request to the
    last session's end (only sessions that delivered everything count)."""
    todo = list(range(n))
    lock = threading.Lock()
    delivered: list[bool] = []

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            _, finish = run()
            ok = finish()
            with lock:
                delivered.append(ok)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    result.burst_total = len(delivered)
    result.burst_delivered = sum(delivered)
    result.per_minute = result.burst_delivered / elapsed * 60


def scenario(
    server: ThreadServer, warmup_ms: int, sessions: int, size: int, workers: int
) -> list[Result]:
    corral, theirs = Result("corral"), Result("seed (sequential, no readiness)")
    corral_run, seed_run = Corral(server, warmup_ms).run, Seed(warmup_ms).run
    corral_run()[1]()  # warm-up: first-use costs (template parse, image checks)
    for _ in range(sessions):  # interleaved, so load hits both alike
        sequential(theirs, seed_run, 1)
        sequential(corral, corral_run, 1)
    burst(theirs, seed_run, size, workers)
    burst(corral, corral_run, size, workers)
    return [theirs, corral]


def report(title: str, results: list[Result]) -> None:
    print(f"\n{title}")
    print(
        f"{'approach':34} {'p50 s':>7} {'p95 s':>7} {'delivered':>10} {'per min':>8} "
        f"{'burst ok':>9}"
    )
    for r in results:
        print(
            f"{r.name:34} {r.quantile(0.5):7.3f} {r.quantile(0.95):7.3f} "
            f"{r.delivered:>4}/{len(r.outcomes):<5} {r.per_minute:8.1f} "
            f"{r.burst_delivered:>4}/{r.burst_total:<4}"
        )
    base, ours = results
    rate = ours.per_minute / base.per_minute if base.per_minute else float("inf")
    print(
        f"ratio corral/seed: p50 {ours.quantile(0.5) / base.quantile(0.5):.2f}x, "
        f"p95 {ours.quantile(0.95) / base.quantile(0.95):.2f}x, "
        f"delivered sessions per minute {rate:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=20, help="sequential sessions each")
    parser.add_argument("--burst", type=int, default=24, help="sessions in the throughput run")
    parser.add_argument("--workers", type=int, default=4, help="concurrent clients in it")
    parser.add_argument(
        "--warmup-ms", type=int, default=1000, help="probe start-up in the second scenario"
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    ensure_local_engine()
    example = build_emulators()
    builder = docker.DockerClient(base_url=LOCAL_URL, version="1.41")
    for role, image in IMAGES.items():  # both approaches use the same, prebuilt images
        builder.images.build(
            path=str(example / "emulators"), dockerfile=f"{role}.Dockerfile", tag=image, rm=True
        )
    print(
        f"edgeECHO sessions, count={COUNT} segmented, local engine, "
        f"{dt.datetime.now():%Y-%m-%d %H:%M}"
    )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(
            home=Path(home),
            bootstrap_token=ADMIN,
            local_docker_url=LOCAL_URL,
            templates_dir=example,
            session_grace_seconds=0,
        )
        with ThreadServer(settings) as server:
            for warmup in (0, args.warmup_ms):
                results = scenario(server, warmup, args.sessions, args.burst, args.workers)
                report(f"probe listens after {warmup} ms", results)


if __name__ == "__main__":
    main()
