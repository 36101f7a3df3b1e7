"""The farm out of the box: a farm file (applied at start and by `corral farm apply`) and
unknown printers accepted, with the seed's printer ids 11-45 pushed into `ready`.

The arm is the DHR-like peer; what a user checks is its jobs: the seed's shape, with the
ids as JSON numbers (`"printer_id": 14, "bed_id": 801`).
"""

import os
import subprocess
from pathlib import Path
from typing import Any

from tests.support.dhr_arm import DhrArm
from tests.support.farm import Names
from tests.support.server import ADMIN, ThreadServer, corral_command, wait_until

from corral.config import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "printfarm" / "farm.yml"
SEED_IDS = [str(i) for i in range(11, 46)]


def _settings(names: Names, home: Path, **more: Any) -> Settings:
    return Settings(
        home=home,
        bootstrap_token=ADMIN,
        local_docker_url="",
        mdns_enabled=False,
        farm_job_timeout_seconds=10,
        **names.settings(),
        **more,
    )


def _run(names: Names, server: ThreadServer, jobs: int) -> list[dict[str, Any]]:
    """The seed's ready ids into `ready`, to a DHR-like arm: the jobs it carried out."""
    arm = DhrArm(1883, 0.0, names.job, names.status).start()
    try:
        wait_until(arm.subscribed, "the arm connected")
        with server.client() as api:
            wait_until(lambda: all(b["connected"] for b in api.get("/brokers").json()), "brokers")
            names.finish(SEED_IDS)
            wait_until(lambda: len(arm.record.done) >= jobs, f"{jobs} jobs", 120)
            assert api.get("/tasks", params={"state": "failed"}).json() == []
        assert arm.record.while_busy == []
        return arm.record.done
    finally:
        arm.stop()


def test_seed_ids_with_the_example_farm_file(tmp_path: Path) -> None:
    names = Names.fresh()
    with ThreadServer(_settings(names, tmp_path, farm_file=EXAMPLE)) as server:
        done = _run(names, server, 70)
    assert {j["printer_id"] for j in done} == set(range(11, 46))
    for job in done:
        assert isinstance(job["printer_id"], int)
        assert isinstance(job["bed_id"], int)
        assert job["open_doors"] == [f"printer{job['printer_id']}"]
        if job["take_from_printer"]:
            assert job["bed_id"] == 500 + job["printer_id"]  # the bed the file put in it
        else:
            assert 801 <= job["bed_id"] <= 880
    loaded = [j["bed_id"] for j in done if not j["take_from_printer"]]
    assert len(set(loaded)) == 35


def test_unknown_printers_accepted_with_a_default_bed_type(tmp_path: Path) -> None:
    names = Names.fresh()
    racks = tmp_path / "racks.yml"
    racks.write_text("racks:\n  A: {slots: 40}\nbeds:\n  801-840: {type: pei, rack: A}\n")
    settings = _settings(
        names,
        tmp_path,
        farm_file=racks,
        farm_accept_unknown=True,
        farm_default_bed_type="pei",
    )
    with ThreadServer(settings) as server:
        done = _run(names, server, 70)
        with server.client() as api:
            printers = {p["id"]: p for p in api.get("/farm/printers").json()}
            added = api.get("/events", params={"kind": "printer.added", "limit": 100}).json()
    assert sorted(printers, key=int) == SEED_IDS
    assert printers["14"]["door"] == "printer14"
    assert printers["14"]["bed_type"] == "pei"
    assert len(added) == 35
    takes = [j for j in done if j["take_from_printer"]]
    replaces = [j for j in done if not j["take_from_printer"]]
    assert all(isinstance(j["printer_id"], int) for j in done)
    assert all(j["bed_id"] is None for j in takes)  # which bed was in it, nobody said
    assert all(isinstance(j["bed_id"], int) for j in replaces)
    assert len({j["bed_id"] for j in replaces}) == 35


def test_farm_apply_is_idempotent_prunes_and_names_bad_lines(tmp_path: Path) -> None:
    names = Names.fresh()
    with ThreadServer(_settings(names, tmp_path)) as server:
        env = {**os.environ, "CORRAL_URL": server.url, "CORRAL_TOKEN": ADMIN}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*corral_command(), "farm", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        first = cli("apply", str(EXAMPLE))
        assert first.returncode == 0, first.stderr
        assert "152 created" in first.stdout  # 2 racks, 115 beds, 35 printers
        again = cli("apply", str(EXAMPLE))
        assert "152 unchanged" in again.stdout
        smaller = tmp_path / "smaller.yml"
        smaller.write_text(
            EXAMPLE.read_text()
            .replace(
                "11-45: {bed_type: pei, position: 10, bed: 511-545}",
                "11: {bed_type: pei, position: 3}",
            )
            .replace("511-545", "511")
        )
        pruned = cli("apply", str(smaller), "--prune")
        assert pruned.returncode == 0, pruned.stderr
        assert "printer 12: removed" in pruned.stdout
        assert "bed 545: removed" in pruned.stdout
        assert "printer 11: updated" in pruned.stdout
        with server.client() as api:
            printers = api.get("/farm/printers").json()
            assert [(p["id"], p["position"], p["bed"]) for p in printers] == [("11", 3.0, "511")]
            bad = api.put("/farm", json={"printers": [{"id": "14"}]})
            assert bad.status_code == 422
            assert "bed_type" in bad.text
            twice = api.put(
                "/farm",
                json={"printers": [{"id": "14", "bed_type": "a"}, {"id": "14", "bed_type": "b"}]},
            )
            assert twice.status_code == 422
            assert "printer 14 is listed twice" in twice.text
            missing = api.put(
                "/farm", json={"beds": [{"id": "1", "type": "a", "rack": "Z", "slot": 1}]}
            )
            assert missing.status_code == 422
            assert "no rack 'Z'" in missing.text
        broken = tmp_path / "broken.yml"
        broken.write_text("racks:\n  A: {slots: 4}\nprinters:\n  14: {bed_typ: pei}\n")
        refused = cli("apply", str(broken))
        assert refused.returncode == 2
        assert "line 4: printers.14.bed_typ: unknown key" in refused.stderr
