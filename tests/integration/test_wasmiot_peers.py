"""corral as the orchestrator of strict Wasm-IoT supervisors (tests/support/wasmiot_supervisor,
written from the protocol facts, not from corral's agent): found over real mDNS on
loopback by their TXT `address` (their shared host name resolves to another address),
chains of two and three of them and mixed with `corral agent`, run through `/execute` on
the anonymous Wasm-IoT port; failover mid-chain when one is killed; a restarted supervisor
(its deployments lost) gets them again, in place, and calls work.
"""

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime
from tests.support.agents import AgentProcess, wat_bytes
from tests.support.processes import free_port
from tests.support.server import wait_until
from tests.support.wasmiot_orchestrator import Orchestrator
from tests.support.wasmiot_supervisor import SupervisorPeer

# The peers advertise on the loopback mDNS as real supervisors do, and any other corral
# browsing at the same time finds them and registers itself with them: a real supervisor
# then refuses health checks from the orchestrator the test started (403, as seen once
# beside the parallel suite). These tests run in the serial phase, with no other corral.
pytestmark = pytest.mark.serial


class Bed:
    """corral, and the devices a test starts (stopped by PID at the end)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.prefix = f"peer-{uuid.uuid4().hex[:8]}"
        # Every peer of a test shares one host name, as supervisors on `vm.local` do.
        self.host_name = f"{self.prefix}-vm"
        self.corral = Orchestrator(
            tmp_path / "corral", mdns_enabled=True, mdns_accept=[f"{self.prefix}-*"]
        )
        self.peers: list[SupervisorPeer] = []
        self.agents: list[AgentProcess] = []

    def peer(self, index: int) -> SupervisorPeer:
        name = f"{self.prefix}-s{index}"
        peer = SupervisorPeer(
            self.tmp_path, name, free_port(), self.corral.wasmiot_port, self.host_name
        )
        self.peers.append(peer)
        return peer.start()

    def agent(self, index: int) -> AgentProcess:
        name = f"{self.prefix}-a{index}"
        agent = AgentProcess(self.tmp_path / name, name, mdns=True)
        self.agents.append(agent)
        return agent.start()

    def stop(self) -> None:
        for peer in self.peers:
            peer.stop()
        for agent in self.agents:
            agent.stop()


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    bed = Bed(tmp_path)
    with bed.corral:
        try:
            yield bed
        finally:
            bed.stop()


def _devices(seed: httpx.Client) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in seed.get("/file/device").json()}


def _wait_ready(seed: httpx.Client, names: list[str]) -> None:
    def ready() -> bool:
        found = _devices(seed)
        return all(
            n in found and found[n]["status"] == "active" and found[n]["description"] for n in names
        )

    wait_until(ready, f"{', '.join(names)} found over mDNS and described", 60)


def _modules(seed: httpx.Client) -> None:
    for name in ("double", "add_ten"):
        files = {"module": (f"{name}.wasm", bytes(wat_bytes(name)), "application/wasm")}
        answer = seed.post("/file/module", data={"name": name}, files=files)
        assert answer.status_code == 201, answer.text


def _deploy(seed: httpx.Client, name: str, steps: list[tuple[str, str]]) -> str:
    """A manifest of (device, module) steps, each module's function named as it."""
    sequence = [{"device": d, "module": m, "func": m} for d, m in steps]
    created = seed.post("/file/manifest", json={"name": name, "sequence": sequence})
    assert created.status_code == 201, created.text
    deployment = created.text
    deployed = seed.post(f"/file/manifest/{deployment}")
    assert deployed.status_code == 200, deployed.text
    return deployment


def _run(seed: httpx.Client, deployment: str, x: int, name: str = "p0") -> dict[str, Any]:
    ran = seed.post(f"/execute/{deployment}", json={name: x})
    assert ran.status_code == 200, ran.text
    result: dict[str, Any] = ran.json()
    return result


def _placed(seed: httpx.Client, deployment: str) -> list[str]:
    """The device of each step of the deployment, as corral has them now."""
    return [s["device"] for s in seed.get(f"/file/manifest/{deployment}").json()["steps"]]


def _has_part(peer: SupervisorPeer, deployment: str, module: str) -> bool:
    """The peer itself answers a call of the deployment's function (GET runs it at once)."""
    answer = httpx.get(f"{peer.url}/{deployment}/modules/{module}/{module}?p0=1", timeout=10)
    return answer.status_code == 200


def _no_log_trouble(bed: Bed) -> None:
    for peer in bed.peers:
        assert "LOG HANDLER REBUILT" not in peer.output(), peer.output()


def test_chains_of_two_and_three_strict_supervisors(bed: Bed) -> None:
    peers = [bed.peer(i) for i in range(3)]
    with bed.corral.seed_client() as seed:
        _wait_ready(seed, [p.name for p in peers])
        # The shared host name resolves to another device's address; TXT `address` first.
        for name, doc in _devices(seed).items():
            assert doc["communication"]["addresses"] == ["127.0.0.1", "127.0.0.3"], name
        _modules(seed)
        s0, s1, s2 = (p.name for p in peers)

        two = _deploy(seed, "two", [(s0, "double"), (s1, "add_ten")])
        ran = _run(seed, two, 16)
        assert ran["result"] == ["42", None]
        assert ran["isInFailover"] is False
        assert ran["fetched_from_device"] == f"127.0.0.1:{peers[1].port}"

        # add_ten becomes a POST (queued by the supervisor: no history entry until it has
        # run), described in the orchestrator's per-function form.
        add_ten = seed.get("/file/module/add_ten").json()[0]["_id"]
        described = seed.post(
            f"/file/module/{add_ten}/upload",
            json={"add_ten": {"method": "POST", "param0": "integer", "output": "integer"}},
        )
        assert described.status_code == 200, described.text

        # The same function twice in one chain, on two devices: 1 -> 2 -> 12 -> 24.
        three = _deploy(seed, "three", [(s0, "double"), (s1, "add_ten"), (s2, "double")])
        assert _run(seed, three, 1)["result"] == ["24", None]
        assert _run(seed, three, 5)["result"] == ["40", None]

        # A manifest changed in place (PUT) is deployed again at once; a manifest posted
        # under a taken name replaces it (same id), to be deployed.
        changed = seed.put(
            f"/file/manifest/{two}",
            json={"sequence": [{"device": s2, "module": "add_ten", "func": "add_ten"}]},
        )
        assert changed.status_code == 200, changed.text
        assert _run(seed, two, 16, "param0")["result"] == ["26", None]
        sequence = [{"device": s1, "module": "double", "func": "double"}]
        replaced = seed.post("/file/manifest", json={"name": "two", "sequence": sequence})
        assert (replaced.status_code, replaced.text) == (201, two)
        assert seed.get(f"/file/manifest/{two}").json()["state"] == "pending"
        assert seed.post(f"/file/manifest/{two}").status_code == 200
        assert _run(seed, two, 16)["result"] == ["32", None]

        # A function that traps mid-chain is a failure of that step, not a device down:
        # 500 naming it on this port, and no step moves.
        boom = wasmtime.wat2wasm(
            '(module (func (export "boom") (param i32) (result i32) unreachable))'
        )
        uploaded = seed.post(
            "/file/module", data={"name": "boom"}, files={"module": ("boom.wasm", bytes(boom))}
        )
        assert uploaded.status_code == 201, uploaded.text
        trapping = _deploy(seed, "trapping", [(s0, "double"), (s1, "boom"), (s2, "add_ten")])
        failed = seed.post(f"/execute/{trapping}", json={"p0": 1})
        assert failed.status_code == 500, failed.text
        assert failed.json()["errorText"].startswith("boom.boom failed:")
        placed = seed.get(f"/file/manifest/{trapping}").json()["steps"]
        assert [s["device"] for s in placed] == [s0, s1, s2]

        # Health checks carry corral's host as the devices reach it: none is refused.
        before = {n: d["okHealthCheckCount"] for n, d in _devices(seed).items()}

        def checked_thrice() -> bool:
            now = _devices(seed)
            return all(now[n]["okHealthCheckCount"] >= before[n] + 3 for n in before)

        wait_until(checked_thrice, "three more good health checks of every device", 30)
        for name, doc in _devices(seed).items():
            assert doc["status"] == "active", (name, doc["lastError"])
            assert doc["failedHealthCheckCount"] == 0, (name, doc["lastError"])
    _no_log_trouble(bed)


def test_chains_mixed_with_agents_and_failover_mid_chain(bed: Bed) -> None:
    peers = [bed.peer(i) for i in range(2)]
    agents = [bed.agent(i) for i in range(2)]
    with bed.corral.seed_client() as seed:
        _wait_ready(seed, [d.name for d in [*peers, *agents]])
        _modules(seed)
        s0, s1 = (p.name for p in peers)
        a0, a1 = (a.name for a in agents)

        # supervisor -> agent -> supervisor, and agent -> supervisor -> agent.
        mixed = _deploy(seed, "mixed", [(s0, "double"), (a0, "add_ten"), (s1, "double")])
        assert _run(seed, mixed, 1)["result"] == ["24", None]
        back = _deploy(seed, "back", [(a0, "double"), (s0, "add_ten"), (a1, "double")])
        assert _run(seed, back, 2)["result"] == ["28", None]

        # The middle supervisor of a chain dies (no goodbye): the first step's call to it
        # fails, corral sees that by the step's status, and moves that step.
        middle = _deploy(seed, "middle", [(a1, "double"), (s1, "add_ten"), (a0, "double")])
        assert _run(seed, middle, 3)["result"] == ["32", None]
        spare = _deploy(seed, "spare", [(s1, "add_ten")])
        peers[1].stop()
        ran = _run(seed, middle, 4)
        assert ran["result"] == ["36", None]
        assert ran["isInFailover"] is True
        moved = seed.get(f"/file/manifest/{middle}").json()
        assert moved["state"] == "deployed"
        assert moved["steps"][1]["device"] != s1

        # Once the health checks find it inactive, the orchestrator's failover call moves
        # the steps of another deployment off it.
        wait_until(lambda: _devices(seed)[s1]["status"] == "inactive", f"{s1} inactive", 30)
        failed_over = seed.post(f"/file/manifest/failover/{spare}")
        assert failed_over.status_code == 200, failed_over.text
        assert seed.get(f"/file/manifest/{spare}").json()["steps"][0]["device"] != s1

        # The middle agent of another chain dies: the same.
        mixed_steps = seed.get(f"/file/manifest/{mixed}").json()["steps"]
        assert mixed_steps[1]["device"] == a0
        agents[0].stop(9)
        ran = _run(seed, mixed, 2)
        assert ran["result"] == ["28", None]
        assert ran["isInFailover"] is True
        assert seed.get(f"/file/manifest/{mixed}").json()["steps"][1]["device"] != a0
    _no_log_trouble(bed)


def test_restarted_supervisors_get_their_deployments_again(bed: Bed) -> None:
    peers = [bed.peer(i) for i in range(3)]
    with bed.corral.seed_client() as seed:
        _wait_ready(seed, [p.name for p in peers])
        _modules(seed)
        s0, s1, s2 = (p.name for p in peers)
        chain = _deploy(seed, "restart", [(s0, "double"), (s1, "add_ten"), (s2, "double")])
        assert _run(seed, chain, 1)["result"] == ["24", None]

        # The middle one restarts: its deployments are gone, as the real one's. corral
        # gives it its part again; no step moves (a failover would give the same value).
        peers[1].restart()
        ran = _run(seed, chain, 2)
        assert ran["result"] == ["28", None]
        assert ran["isInFailover"] is False
        assert _placed(seed, chain) == [s0, s1, s2]
        assert _has_part(peers[1], chain, "add_ten")

        # The first one restarts: corral's own first call finds no deployment there.
        peers[0].restart()
        ran = _run(seed, chain, 3)
        assert ran["result"] == ["32", None]
        assert ran["isInFailover"] is False
        assert _placed(seed, chain) == [s0, s1, s2]
        assert _has_part(peers[0], chain, "double")

        # The last one restarts and corral's health checks see it came back without its
        # orchestrator: it is registered and given its part again before anyone calls.
        peers[2].restart()

        wait_until(
            lambda: _has_part(peers[2], chain, "double"), "the restarted device redeployed", 30
        )
        ran = _run(seed, chain, 4)
        assert ran["result"] == ["36", None]
        assert ran["isInFailover"] is False
        assert _placed(seed, chain) == [s0, s1, s2]
        for doc in _devices(seed).values():
            assert doc["status"] == "active"
    _no_log_trouble(bed)


def test_orchestrator_answers_on_the_wasmiot_port(tmp_path: Path) -> None:
    """The shapes the orchestrator's clients and web GUI rely on, without a token."""
    corral = Orchestrator(tmp_path / "corral", mdns_enabled=False)
    with corral, corral.seed_client() as seed:
        # CORS is open: the web GUI calls from another origin.
        origin = {"Origin": "http://gui.example"}
        preflight = seed.options(
            "/file/module",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] in ("*", origin["Origin"])
        listed = seed.get("/file/device", headers=origin)
        assert listed.headers["access-control-allow-origin"] in ("*", origin["Origin"])

        # Bytes already stored: 201 again, with the same id.
        files = {"module": ("double.wasm", bytes(wat_bytes("double")), "application/wasm")}
        first = seed.post("/file/module", data={"name": "double"}, files=files)
        again = seed.post("/file/module", data={"name": "double"}, files=files)
        assert (first.status_code, again.status_code) == (201, 201)
        assert first.json()["id"] == again.json()["id"]
        module = first.json()["id"]

        # The orchestrator's description forms: bracketed multipart fields, per-function
        # JSON with param0, param1, ...
        described = seed.post(
            f"/file/module/{module}/upload",
            files={
                "double[method]": (None, "GET"),
                "double[param0]": (None, "integer"),
                "double[output]": (None, "integer"),
            },
        )
        assert described.status_code == 200, described.text
        path = described.json()["description"]["paths"]["/{deployment}/modules/double/double"]
        assert [p["name"] for p in path["get"]["parameters"]] == ["deployment", "param0"]
        described = seed.post(
            f"/file/module/{module}/upload",
            json={"double": {"method": "post", "param0": "integer", "output": "integer"}},
        )
        assert described.status_code == 200, described.text
        assert (
            "post"
            in described.json()["description"]["paths"]["/{deployment}/modules/double/double"]
        )

        # Errors: {errorText, error} with 400 for bad input, 500 for a failure elsewhere.
        bad = seed.post("/file/manifest", json={"name": "x", "sequence": []})
        assert bad.status_code == 400
        assert isinstance(bad.json()["error"], str)
        assert "sequence" in bad.json()["errorText"]
        assert seed.get("/nothing").json() == {"err": "Bad URL"}
        registered = seed.post(
            "/file/device/discovery/register",
            json={"name": "absent", "port": free_port(), "addresses": ["127.0.0.1"]},
        )
        assert registered.status_code == 204, registered.text
        created = seed.post(
            "/file/manifest",
            json={
                "name": "nowhere",
                "sequence": [{"device": None, "module": "double", "func": "double"}],
            },
        )
        assert created.status_code == 400, "no described device can take the step"
        assert "no active device" in created.json()["errorText"]

        # Blacklisting answers {message, deviceId}.
        black = seed.post("/file/device/absent/blacklist")
        assert black.status_code == 200
        assert black.json()["deviceId"] == "absent"
        assert "blacklisted" in black.json()["message"]
        assert _devices(seed)["absent"]["blacklisted"] is True

        # Logs: 200 {"message": "Log received and saved"}, then listed (?date= filters).
        record = {"deviceName": "absent", "logLevel": "INFO", "message": "hello"}
        logged = seed.post("/device/logs", data={"logData": json.dumps(record)})
        assert logged.status_code == 200
        assert logged.json() == {"message": "Log received and saved"}
        stored = seed.get("/device/logs").json()
        assert [(r["deviceName"], r["message"]) for r in stored] == [("absent", "hello")]
        assert seed.get("/device/logs", params={"date": "2999-01-01"}).json() == []
        since = stored[0]["dateReceived"][:10]
        assert len(seed.get("/device/logs", params={"date": since}).json()) == 1
        assert seed.get("/device/logs", params={"date": "yesterday"}).status_code == 400


def _openapi_export(module: str, func: str) -> dict[str, Any]:
    """A module description as the orchestrator exports it (GET /file/module)."""
    return {
        "openapi": "3.0.3",
        "info": {"title": module, "version": "0.0.1"},
        "paths": {
            f"/{{deployment}}/modules/{module}/{func}": {
                "summary": "Auto-generated description of function",
                "parameters": [
                    {"name": "deployment", "in": "path", "required": True, "schema": {}}
                ],
                "get": {
                    "parameters": [
                        {
                            "name": "param0",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "responses": {
                        "200": {"content": {"application/json": {"schema": {"type": "integer"}}}}
                    },
                },
            }
        },
    }


def test_the_orchestrators_own_exports_import_unchanged(tmp_path: Path) -> None:
    """init/ files as `curl /file/device > init/device/devices.json` and so on write them:
    arrays of documents with MongoDB ids, steps naming devices and modules by those ids."""
    prefix = f"init-{uuid.uuid4().hex[:8]}"
    init = tmp_path / "init"
    for sub in ("device", "module", "deployment", "files"):
        (init / sub).mkdir(parents=True)
    ports = [free_port(), free_port()]
    device_ids = ["6862597e44799bc88dfe2d60", "6862597e44799bc88dfe2d61"]
    devices = [
        {
            "_id": device_ids[i],
            "name": f"{prefix}-s{i}",
            "communication": {"addresses": ["127.0.0.1"], "port": ports[i]},
            "description": {"platform": {}, "supervisorInterfaces": []},
            "status": "active",
            "okHealthCheckCount": 12,
        }
        for i in range(2)
    ]
    (init / "device" / "devices.json").write_text(json.dumps(devices))
    module_ids = {"double": "68625a3144799bc88dfe2d69", "add_ten": "68625a3144799bc88dfe2d6a"}
    modules = []
    for name, module_id in module_ids.items():
        (init / "files" / f"{name}.wasm").write_bytes(bytes(wat_bytes(name)))
        modules.append(
            {
                "_id": {"$oid": module_id},
                "name": name,
                "exports": [{"name": name, "parameterCount": 1}],
                "requirements": [],
                "wasm": {
                    "originalFilename": f"{name}.wasm",
                    "fileName": uuid.uuid4().hex,
                    "path": f"/app/fileserv/files/wasm/{name}",
                },
                "dataFiles": {},
                "description": _openapi_export(name, name),
                "mounts": {name: {}},
            }
        )
    (init / "module" / "modules.json").write_text(json.dumps(modules))
    manifest = {
        "_id": "6862600044799bc88dfe2d70",
        "name": "imported",
        "sequence": [
            {"device": device_ids[0], "module": module_ids["double"], "func": "double"},
            {"device": device_ids[1], "module": module_ids["add_ten"], "func": "add_ten"},
        ],
        "fullManifest": {},
    }
    (init / "deployment" / "manifests.json").write_text(json.dumps([manifest]))

    corral = Orchestrator(tmp_path / "corral", mdns_enabled=False, init_dir=init)
    peers = [
        SupervisorPeer(tmp_path, d["name"], p, corral.wasmiot_port, "")
        for d, p in zip(devices, ports, strict=True)
    ]
    try:
        for peer in peers:
            peer.start()
        with corral, corral.seed_client() as seed:
            found = {m["name"]: m for m in seed.get("/file/module").json()}
            assert found["double"]["functions"]["double"]["parameters"] == [
                {"name": "param0", "type": "integer"}
            ]
            [row] = seed.get("/file/manifest").json()
            assert row["name"] == "imported"
            assert [s["device"] for s in row["steps"]] == [d["name"] for d in devices]
            _wait_ready(seed, [d["name"] for d in devices])
            assert seed.post(f"/file/manifest/{row['_id']}").status_code == 200
            ran = seed.post(f"/execute/{row['_id']}", json={"param0": 16})
            assert ran.status_code == 200, ran.text
            assert ran.json()["result"] == ["42", None]
    finally:
        for peer in peers:
            peer.stop()


def test_logs_need_no_token_on_a_wasmiot_port_that_is_not_anonymous(tmp_path: Path) -> None:
    """A supervisor posts its logs to port 3000 of its caller before it has an orchestrator,
    and never with a token; everything else on that port still needs one."""
    corral = Orchestrator(tmp_path / "corral", anonymous=False, mdns_enabled=False)
    with corral, corral.seed_client() as seed, corral.client() as api:
        assert seed.get("/file/device").status_code == 401
        record = {"message": "Supervisor starting", "logLevel": "INFO"}
        logged = seed.post("/device/logs", data={"logData": json.dumps(record)})
        assert logged.status_code == 200
        assert logged.json() == {"message": "Log received and saved"}
        assert seed.get("/device/logs").status_code == 401
        [stored] = api.get("/device/logs").json()
        assert stored["message"] == "Supervisor starting"
        assert stored["deviceIP"] == "127.0.0.1"
