"""The print farm against the machine's real RabbitMQ and Mosquitto: printers finishing in
bursts, homing, bad input (broker restarts, on private brokers: test_farm_dhr_arm.py).

What a user checks is what the (simulated) arm received: one take then one replace per
finished printer, with the right beds, and never a job while it was busy.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.farm import Names, arm, jobs, layout
from tests.support.server import ADMIN, ThreadServer, wait_until

from corral.config import Settings


@pytest.fixture
def names() -> Names:
    return Names.fresh()


@pytest.fixture
def server(names: Names, tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url="",
        farm_job_timeout_seconds=20,
        **names.settings(),
    )
    with ThreadServer(settings) as running:
        with running.client() as api:
            wait_until(
                lambda: all(b["connected"] for b in api.get("/brokers").json()), "brokers up"
            )
        yield running


def _check_jobs(received: list[dict[str, Any]], inside: dict[str, str]) -> None:
    """Each printer: exactly a take (with the bed in it), then a replace (with a clean bed
    of its type, not given to anyone else); the arm was never busy when a job came."""
    assert [r for r in received if r["busy"]] == [], "the arm got a job while busy"
    by_printer: dict[str, list[dict[str, Any]]] = {}
    for record in received:
        job = record["job"]
        if job["printer_id"] is not None:
            by_printer.setdefault(job["printer_id"], []).append(job)
    assert sorted(by_printer) == sorted(inside)
    loaded = []
    for printer, its in by_printer.items():
        assert [j["take_from_printer"] for j in its] == [True, False], (printer, its)
        take, replace = its
        assert take["bed_id"] == inside[printer]
        assert take["open_doors"] == replace["open_doors"] == [f"door-{printer[1:]}"]
        assert take["load_next_bed_without_homing"] is True  # its replace comes next
        assert replace["bed_id"].startswith("spare-")
        loaded.append(replace["bed_id"])
    assert len(set(loaded)) == len(loaded), "a bed was given twice"


def test_twenty_printers_in_bursts(server: ThreadServer, names: Names, tmp_path: Path) -> None:
    record = tmp_path / "arm.jsonl"
    with server.client() as api, arm(names, record):
        inside = layout(api, printers=20, spare_beds=24)
        for burst in range(4):
            names.finish([f"p{i}" for i in range(burst * 5, burst * 5 + 5)])
            time.sleep(0.3)
        wait_until(lambda: len(jobs(record)) >= 40, "40 jobs at the arm")
        wait_until(
            lambda: len(api.get("/tasks", params={"state": "done"}).json()) == 40, "40 tasks done"
        )
        time.sleep(0.5)  # nothing more arrives
        _check_jobs(jobs(record), inside)
        # The nearest rack first: the 12 near spares go before any far one.
        near = [j["job"]["bed_id"] for j in jobs(record) if not j["job"]["take_from_printer"]]
        assert all(int(b.split("-")[1]) % 2 == 0 for b in near[:12])
        beds = {b["id"]: b for b in api.get("/farm/beds").json()}
        for printer in api.get("/farm/printers").json():
            assert printer["state"] == "idle"
            assert beds[printer["bed"]]["printer"] == printer["id"]
            assert beds[printer["bed"]]["reserved_for"] is None
        assert all(beds[f"inside-{i}"]["state"] == "with_part" for i in range(20))
        usage = api.get("/farm/printers/p0/utilization").json()
        assert usage["by_state"]["finished"] > 0
        assert usage["busy_s"] == 0  # never reported printing


def test_homing_from_the_queue_and_rest(server: ThreadServer, names: Names, tmp_path: Path) -> None:
    record = tmp_path / "arm.jsonl"
    with server.client() as api, arm(names, record):
        from tests.support.farm import finish

        finish(["anything"], queue=names.homing)
        assert api.post("/triggers/farm-homing-queue/fire", content="x").status_code == 200
        wait_until(lambda: len(jobs(record)) >= 2, "two homing jobs")
        homing = {
            "printer_id": None,
            "bed_id": None,
            "take_from_printer": False,
            "load_next_bed_without_homing": False,
            "open_doors": [],
        }
        assert [r["job"] for r in jobs(record)] == [homing, homing]


def test_homing_on_a_schedule(names: Names, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url="",
        **{**names.settings(), "farm_homing_schedule": "every 1s"},
    )
    record = tmp_path / "arm.jsonl"
    with ThreadServer(settings) as server, server.client() as api, arm(names, record):
        wait_until(lambda: len(jobs(record)) >= 3, "three scheduled homings", 30)
        fired = {t["name"]: t for t in api.get("/triggers").json()}["farm-homing-schedule"]
        assert fired["fired"] >= 3
        assert fired["source"] == "schedule every 1s"
        assert all(r["job"]["printer_id"] is None for r in jobs(record))


def test_bad_input_is_an_event_and_the_pipeline_goes_on(
    server: ThreadServer, names: Names, tmp_path: Path
) -> None:
    record = tmp_path / "arm.jsonl"
    with server.client() as api, arm(names, record):
        inside = layout(api, printers=2, spare_beds=2)
        api.put("/farm/printers/odd", json={"bed_type": "glass", "door": "door-odd"})
        names.finish(["no-such-printer", "", "p0", "odd"])
        # A malformed status: the arm's state stays what it was.
        import paho.mqtt.publish as publish
        from tests.support.farm import finish

        publish.single(names.status, "not json", hostname="127.0.0.1")
        publish.single(names.status, '{"status": "dancing"}', hostname="127.0.0.1")
        finish(["p1"], queue=names.ready)
        wait_until(lambda: len(jobs(record)) >= 5, "p0, p1 and odd's take")
        wait_until(lambda: len(api.get("/tasks", params={"state": "done"}).json()) == 5, "done")
        kinds = [e["kind"] for e in api.get("/events", params={"limit": 500}).json()]
        assert kinds.count("farm.ready.rejected") == 2  # unknown id, empty body
        assert kinds.count("farm.status.rejected") == 2
        assert "farm.bed.unavailable" in kinds  # odd takes glass beds: none exist
        received = jobs(record)
        odd = [r["job"] for r in received if r["job"]["printer_id"] == "odd"]
        assert [j["take_from_printer"] for j in odd] == [True]  # a take, no replace
        _check_jobs([r for r in received if r["job"]["printer_id"] != "odd"], inside)


def test_duplicate_ready_is_ignored_while_its_tasks_are_open(
    server: ThreadServer, names: Names
) -> None:
    with server.client() as api:  # no arm: the tasks stay queued
        layout(api, printers=1, spare_beds=1)
        names.finish(["p0", "p0"])
        wait_until(
            lambda: (
                "farm.ready.duplicate"
                in [e["kind"] for e in api.get("/events", params={"limit": 200}).json()]
            ),
            "the duplicate noticed",
        )
        tasks = api.get("/tasks").json()
        assert sorted(t["kind"] for t in tasks) == ["replace", "take"]


def test_bad_requests(server: ThreadServer) -> None:
    with server.client() as api:
        assert api.post("/tasks", json={"kind": "take", "target": "nobody"}).status_code == 404
        wrong = api.post("/tasks", json={"kind": "dance", "target": "robot_arm"})
        assert wrong.status_code == 409
        assert "dance" in wrong.json()["error"]["message"]
        missing = api.post(
            "/tasks", json={"kind": "take", "target": "robot_arm", "params": {"printer_id": "x"}}
        )
        assert missing.status_code == 404
        assert api.put("/farm/printers/p1", json={"bed_type": ""}).status_code == 422
        assert api.put("/farm/printers/bad id", json={"bed_type": "a"}).status_code in (404, 422)
        assert (
            api.put("/farm/beds/b1", json={"type": "a", "rack": "none", "slot": 1}).status_code
            == 404
        )
        assert api.put("/farm/printers/p2/state", json={"state": "melting"}).status_code == 422
        assert api.post("/tasks/999/cancel").status_code == 404
        assert api.get("/farm/printers/p9/utilization").status_code == 404
        bad_range = api.get(
            "/farm/printers/p9/utilization",
            params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        )
        assert bad_range.status_code in (404, 422)
        assert api.post("/triggers/nope/fire", content="x").status_code == 404


def test_tasks_cancel_and_retry(server: ThreadServer) -> None:
    """No arm answers: the first task goes out to the broker and stays out (the arm ends
    it), the second waits behind it in the queue (a cancel takes it out)."""
    with server.client() as api:
        out, waiting = (
            api.post("/tasks", json={"kind": "homing", "target": "robot_arm"}).json()
            for _ in range(2)
        )
        wait_until(lambda: api.get(f"/tasks/{out['id']}").json()["state"] == "assigned", "sent")
        refused = api.post(f"/tasks/{out['id']}/cancel")
        assert refused.status_code == 409
        assert "it ends when robot_arm reports" in refused.json()["error"]["message"]
        cancelled = api.post(f"/tasks/{waiting['id']}/cancel").json()
        assert cancelled["state"] == "cancelled"
        assert cancelled["sent_at"] is None
        assert api.post(f"/tasks/{waiting['id']}/cancel").status_code == 409
        again = api.post(f"/tasks/{waiting['id']}/retry")
        assert again.status_code == 201
        assert again.json()["source"] == f"retry of task {waiting['id']}"


def test_the_farm_on_postgresql(names: Names, tmp_path: Path, pg_url: str) -> None:
    """The same pipeline with PostgreSQL as the store: tasks, beds, utilization."""
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url="",
        database_url=pg_url,
        farm_job_timeout_seconds=20,
        **names.settings(),
    )
    record = tmp_path / "arm.jsonl"
    with ThreadServer(settings) as server, server.client() as api, arm(names, record):
        wait_until(lambda: all(b["connected"] for b in api.get("/brokers").json()), "brokers up")
        inside = layout(api, printers=6, spare_beds=6)
        api.put("/farm/printers/p0/state", json={"state": "printing"}).raise_for_status()
        time.sleep(0.5)
        # p0 twice in a row: a duplicate while its tasks are open (sent last, it could come
        # after the arm had done p0's take and replace: then it is a new print's ready)
        names.finish(["p0", "p0"] + [f"p{i}" for i in range(1, 6)])
        wait_until(lambda: len(api.get("/tasks", params={"state": "done"}).json()) == 12, "done")
        _check_jobs(jobs(record), inside)
        usage = api.get("/farm/printers/p0/utilization").json()
        assert usage["busy_s"] > 0.3  # it printed for the half second above
        assert 0 < usage["utilization"] < 1
        retried = api.post("/tasks", json={"kind": "homing", "target": "robot_arm"})
        assert retried.status_code == 201
