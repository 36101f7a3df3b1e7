"""SIGKILL of `corral serve` in the middle of the print farm's work, then a restart, and the
farm's CLI.

No finished print may be lost (every ready message becomes a take and a replace) and none
handled twice (the arm receives each job once), whatever corral was doing when killed.
"""

import os
import signal
import time
from pathlib import Path

import httpx
from tests.support.farm import Names, arm, jobs, layout
from tests.support.server import ADMIN, ServeProcess, run_cli, wait_until


def test_sigkill_mid_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    names = Names.fresh()
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_FARM_JOB_TIMEOUT_SECONDS": "3",
        **names.env(),
    }
    serve = ServeProcess(tmp_path, env).start()
    record = tmp_path / "arm.jsonl"
    headers = {"Authorization": f"Bearer {ADMIN}"}
    try:
        with arm(names, record, work=0.3) as running:
            with httpx.Client(base_url=serve.url, headers=headers, timeout=30) as api:
                inside = layout(api, printers=14, spare_beds=14)
            names.finish([f"p{i}" for i in range(10)])
            with httpx.Client(base_url=serve.url, headers=headers, timeout=30) as api:
                # Killed inside a long job, once the arm's busy is stored (docs/farm.md: the
                # in-flight rule); the jobs before and after take 0.3 s.
                wait_until(lambda: len(jobs(record)) >= 3, "the arm at work")
                running.work = 2.0
                started = len(jobs(record))
                wait_until(lambda: len(jobs(record)) > started, "a long job under way")
                wait_until(lambda: api.get("/tasks", params={"state": "running"}).json(), "busy")
            assert serve.proc is not None
            os.kill(serve.proc.pid, signal.SIGKILL)
            serve.stop()
            running.work = 0.3
            names.finish([f"p{i}" for i in range(10, 14)])  # while corral is down
            time.sleep(1)
            serve.start()
            with httpx.Client(base_url=serve.url, headers=headers, timeout=30) as api:
                wait_until(
                    lambda: len(api.get("/tasks", params={"state": "done"}).json()) == 28,
                    "28 tasks done after the restart",
                    120,
                )
                assert api.get("/tasks", params={"state": "failed"}).json() == []
            time.sleep(1)
        received = jobs(record)
        assert [r for r in received if r["busy"]] == []
        per_printer: dict[str, list[bool]] = {}
        for r in received:
            per_printer.setdefault(r["job"]["printer_id"], []).append(r["job"]["take_from_printer"])
        assert sorted(per_printer) == sorted(inside)
        assert all(takes == [True, False] for takes in per_printer.values()), per_printer

        brokers = run_cli(serve, "broker", "ls")
        assert brokers.returncode == 0
        assert "amqp" in brokers.stdout
        assert "up" in brokers.stdout
        listed = run_cli(serve, "task", "ls", "--state", "done", "--limit", "100")
        assert listed.stdout.count(" done ") == 28
        assert "available" in run_cli(serve, "farm", "arm").stdout
        assert "p13" in run_cli(serve, "farm", "usage").stdout
        assert "farm-ready" in run_cli(serve, "trigger", "ls").stdout
        bad = run_cli(serve, "task", "new", "dance")
        assert bad.returncode == 2
        assert "dance" in bad.stderr
    finally:
        serve.stop()
