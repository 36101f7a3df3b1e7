"""The CLI's start-up: `corral --help` and `corral stack ls` timed as whole processes.

Each row is one command line started as a process, from the start to its exit (the
interpreter, the imports, the request and the output included), against a `corral serve`
that is already answering (a separate process, SQLite in a temp dir, no Docker host, so
the listing is empty: the request and the answer, not a table, are what is timed). For
context, on the same server: the interpreter alone (`python -c pass`), a minimal Python
client (`urllib` GET of `/stacks`, the floor for any Python CLI) and `curl` (if
installed). All rows are interleaved, one of each per round, so a change in the machine's
load hits them alike; medians and the ratios to the floors are printed, with the CPU time
(user + system) of each, which depends less on the load.

`--before DIR` adds the same two corral rows run from another source tree (e.g. an
older checkout's `src`, via PYTHONPATH), interleaved with the rest: a before/after in one
run.

    .venv/bin/python bench/cli.py                      # 10 runs each after 2 warm-up
    .venv/bin/python bench/cli.py --runs 20 --before /tmp/corral-old/src
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.server import ADMIN, ServeProcess  # noqa: E402

FLOOR = """\
import json, sys, urllib.request
auth = {"Authorization": "Bearer " + sys.argv[2]}
request = urllib.request.Request(sys.argv[1] + "/stacks", headers=auth)
with urllib.request.urlopen(request) as answer:
    print(len(json.load(answer)), "stacks")
"""


def corral(source: Path | None) -> tuple[list[str], dict[str, str]]:
    """The `corral` command line, and the environment that picks its source tree."""
    script = Path(sys.executable).parent / "corral"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "corral"]
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    return command, env


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall ms, CPU ms) of one run; the run must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, timeout=60, check=False)
    wall = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{command} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each command")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--before", type=Path, help="another source tree to time alongside")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")

    now = dt.datetime.now(dt.UTC)
    print(f"corral CLI start-up, whole processes, {now:%Y-%m-%d %H:%M} UTC")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {cores} CPUs, {platform.platform()}, Python {platform.python_version()}")
    with open("/proc/loadavg", encoding="utf-8") as loadavg:
        print(f"load average at start: {' '.join(loadavg.read().split()[:3])}")
    print(f"{args.runs} runs of each after {args.warmup} warm-up rounds, interleaved")

    with tempfile.TemporaryDirectory(prefix="corral-bench-cli-") as home:
        env = {
            "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
            "CORRAL_LOCAL_DOCKER_URL": "",
            "CORRAL_MDNS_ENABLED": "false",
            "CORRAL_LOG_LEVEL": "warning",
        }
        serve = ServeProcess(Path(home) / "serve", env)
        serve.start()
        try:
            rows = commands(serve.url, args.before)
            samples = measure(rows, args.runs, args.warmup)
        finally:
            serve.stop()
    report(samples)


Row = tuple[str, list[str], dict[str, str]]
FLOOR_ROW = "python urllib GET /stacks (Python floor)"


def commands(url: str, before: Path | None) -> list[Row]:
    base = {**os.environ, "CORRAL_URL": url, "CORRAL_TOKEN": ADMIN}
    command, ours = corral(None)
    rows: list[Row] = [
        ("python -c pass (interpreter start)", [sys.executable, "-c", "pass"], base),
        (FLOOR_ROW, [sys.executable, "-c", FLOOR, url, ADMIN], base),
    ]
    curl = shutil.which("curl")
    if curl:
        auth = f"Authorization: Bearer {ADMIN}"
        rows.append(("curl GET /stacks", [curl, "-sf", "-H", auth, f"{url}/stacks"], base))
    rows += [
        ("corral --help", [*command, "--help"], {**base, **ours}),
        ("corral stack ls", [*command, "stack", "ls"], {**base, **ours}),
    ]
    if before is not None:
        old, theirs = corral(before)
        rows += [
            ("corral --help (before)", [*old, "--help"], {**base, **theirs}),
            ("corral stack ls (before)", [*old, "stack", "ls"], {**base, **theirs}),
        ]
    return rows


def measure(rows: list[Row], runs: int, warmup: int) -> dict[str, list[tuple[float, float]]]:
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in rows}
    for round_ in range(warmup + runs):
        for label, command, env in rows:
            taken = run_once(command, env)
            if round_ >= warmup:
                samples[label].append(taken)
    return samples


def report(samples: dict[str, list[tuple[float, float]]]) -> None:
    print()
    heads = f"{'wall p50':>9} {'min':>7} {'max':>7} {'cpu p50':>8}"
    print(f"{'command (ms, whole process)':44} {heads}")
    medians: dict[str, float] = {}
    for label, values in samples.items():
        walls = [w for w, _ in values]
        medians[label] = statistics.median(walls)
        cpu = statistics.median(c for _, c in values)
        print(f"{label:44} {medians[label]:9.1f} {min(walls):7.1f} {max(walls):7.1f} {cpu:8.1f}")
    print()
    print("ratios of medians")

    def ratio(label: str, ours: str, base: str) -> None:
        if ours in medians and base in medians:
            print(f"  {label:44} {medians[ours] / medians[base]:.2f}x")

    for label in ("corral --help", "corral stack ls"):
        ratio(f"{label} / Python floor", label, FLOOR_ROW)
        ratio(f"{label} before / after", f"{label} (before)", label)
    ratio("corral stack ls / curl", "corral stack ls", "curl GET /stacks")


if __name__ == "__main__":
    main()
