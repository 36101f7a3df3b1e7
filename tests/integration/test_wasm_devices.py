"""Wasm devices end to end: real `corral agent` processes found over real mDNS on loopback,
modules uploaded, a two-step chain deployed and run through /execute, failover when an
agent is killed, the fuel limit, bad input, and the reach of device tokens.
"""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.agents import AgentProcess, unique_name, wat_bytes
from tests.support.server import ADMIN, ThreadServer, wait_until

from corral.config import Settings


def _server(tmp_path: Path, **extra: Any) -> ThreadServer:
    settings = Settings(
        home=tmp_path / "corral",
        bootstrap_token=ADMIN,
        local_docker_url="",
        **{"device_health_seconds": 0.5, **extra},
    )
    server = ThreadServer(settings)
    server.settings.public_url = server.url
    return server


def _token(api: httpx.Client, device: str) -> str:
    answer = api.post("/tokens", json={"name": device, "role": "device"})
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["token"]
    return token


def _upload(api: httpx.Client, name: str, data: bytes | None = None) -> str:
    files = {"module": (f"{name}.wasm", bytes(data if data is not None else wat_bytes(name)))}
    answer = api.post("/file/module", data={"name": name}, files=files)
    assert answer.status_code in (200, 201), answer.text
    module_id: str = answer.json()["id"]
    return module_id


def _devices(api: httpx.Client) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in api.get("/file/device").json()}


def _deploy(api: httpx.Client, manifest: dict[str, Any]) -> str:
    created = api.post("/file/manifest", json=manifest)
    assert created.status_code == 201, created.text
    deployment = created.text
    deployed = api.post(f"/file/manifest/{deployment}")
    assert deployed.status_code == 200, deployed.text
    assert {a["status"] for a in deployed.json()["deviceResponses"].values()} == {200}
    return deployment


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def test_agents_found_over_mdns_run_a_chain_and_fail_over(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    prefix = unique_name("mdns")
    server = _server(tmp_path, mdns_enabled=True, mdns_accept=[f"{prefix}-*"])
    with server, server.client() as api:
        names = [f"{prefix}-{i}" for i in range(3)]
        for name in names:
            agent = AgentProcess(tmp_path / name, name, token=_token(api, name), mdns=True)
            agents.append(agent.start())
        started = time.monotonic()

        def all_described() -> bool:
            found = _devices(api)
            return all(
                n in found and found[n]["status"] == "active" and found[n]["description"]
                for n in names
            )

        wait_until(all_described, "three agents found over mDNS and described", 30)
        print(f"three agents found and described in {time.monotonic() - started:.2f} s")
        found = _devices(api)
        for agent in agents:
            doc = found[agent.name]
            assert doc["source"] == "mdns"
            assert doc["communication"] == {"addresses": ["127.0.0.1"], "port": agent.port}
            assert "wasi_snapshot_preview1" in doc["description"]["supervisorInterfaces"]

        double = _upload(api, "double")
        _upload(api, "add_ten")
        described = api.post(
            f"/file/module/{double}/upload",
            json={"double": {"method": "GET", "parameters": [{"name": "x", "type": "integer"}]}},
        )
        assert described.status_code == 200, described.text
        assert "/{deployment}/modules/double/double" in described.json()["description"]["paths"]

        deployment = _deploy(
            api,
            {
                "name": "chain",
                "sequence": [
                    {"device": None, "module": "double", "func": "double"},
                    {"device": None, "module": "add_ten", "func": "add_ten"},
                ],
            },
        )
        doc = api.get(f"/file/manifest/{deployment}").json()
        first, second = (step["device"] for step in doc["steps"])
        assert first != second, "placement spreads the two steps over two devices"

        ran = api.post(f"/execute/{deployment}", json={"x": 16})
        assert ran.status_code == 200, ran.text
        assert ran.json()["result"] == ["42", None]
        assert ran.json()["isInFailover"] is False

        # The first step's agent dies without a goodbye: the chain runs elsewhere.
        step = {"device": first, "module": "double", "func": "double"}
        pinned = api.post("/file/manifest", json={"name": "pinned", "sequence": [step]})
        assert pinned.status_code == 201, pinned.text
        victim = next(a for a in agents if a.name == first)
        victim.stop(9)
        ran = api.post(f"/execute/{deployment}", json={"x": 5})
        assert ran.status_code == 200, ran.text
        assert ran.json()["result"] == ["20", None]
        assert ran.json()["isInFailover"] is True
        moved = api.get(f"/file/manifest/{deployment}").json()
        assert moved["state"] == "deployed"
        assert first not in {step["device"] for step in moved["steps"]}

        # Deploying onto it before the health checks have found it down: its step moves.
        deployed = api.post(f"/file/manifest/{pinned.text}")
        assert deployed.status_code == 200, deployed.text
        view = api.get(f"/file/manifest/{pinned.text}").json()
        assert view["state"] == "deployed", view
        assert view["steps"][0]["device"] != first

        def inactive() -> bool:
            return _devices(api)[first]["status"] == "inactive"

        wait_until(inactive, f"{first} marked inactive after failed health checks", 30)
        log = _devices(api)[first]["statusLog"]
        assert log[0]["status"] == "inactive"
        kinds = [e["kind"] for e in api.get("/events", params={"limit": 200}).json()]
        assert "deployment.failover" in kinds
        assert "device.inactive" in kinds

        # It comes back (mDNS announces it again) and is active once more.
        victim.start()
        wait_until(lambda: _devices(api)[first]["status"] == "active", f"{first} back", 30)

        # A clean stop says goodbye over mDNS: the device is gone.
        leaving = next(a for a in agents if a.name not in (first,))
        leaving.stop()
        wait_until(
            lambda: _devices(api)[leaving.name]["status"] == "gone", "goodbye seen as gone", 30
        )


def test_fuel_limit_and_bad_input_get_clear_answers(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    server = _server(tmp_path)
    with server, server.client() as api:
        name = unique_name("fuel")
        agent = AgentProcess(
            tmp_path / name, name, token=_token(api, name), args=("--fuel", "2000000")
        )
        agents.append(agent.start())
        registered = api.post(
            "/file/device/discovery/register",
            json={"name": name, "port": agent.port, "addresses": ["127.0.0.1"]},
        )
        assert registered.status_code == 204, registered.text
        wait_until(lambda: _devices(api)[name]["description"], "device described", 30)
        _upload(api, "spin")
        _upload(api, "double")
        spin = _deploy(api, {"name": "spin", "sequence": [{"module": "spin", "func": "spin"}]})

        ran = api.post(f"/execute/{spin}", json={})
        assert ran.status_code == 502, ran.text
        assert "out of fuel" in ran.json()["error"]["message"]
        assert httpx.get(f"{agent.url}/health", timeout=10).status_code == 200
        double = _deploy(
            api, {"name": "double", "sequence": [{"module": "double", "func": "double"}]}
        )
        ran = api.post(f"/execute/{double}", json={"p0": 21})
        assert ran.json()["result"] == ["42", None], "the agent still runs other calls"

        # Bad input, each refused with a 4xx that names the problem.
        bad = api.post(
            "/file/module", data={"name": "junk"}, files={"module": ("junk.wasm", b"\0asmjunk")}
        )
        assert bad.status_code == 422
        assert "junk.wasm is not valid WebAssembly" in bad.json()["error"]["message"]
        bad = api.post(
            "/file/module", data={"name": "text"}, files={"module": ("t.wasm", b"hello")}
        )
        assert bad.status_code == 422
        assert "not a WebAssembly binary" in bad.text
        bad = api.post("/file/manifest", json={"name": "x", "sequence": [{"module": "nope"}]})
        assert bad.status_code == 422
        assert "func" in bad.json()["error"]["message"]
        bad = api.post(
            "/file/manifest", json={"name": "x", "sequence": [{"module": "nope", "func": "f"}]}
        )
        assert bad.status_code == 422
        assert "unknown module 'nope'" in bad.json()["error"]["message"]
        bad = api.post(
            "/file/manifest",
            json={"name": "x", "sequence": [{"module": "double", "func": "triple"}]},
        )
        assert bad.status_code == 422
        assert "no function 'triple'" in bad.json()["error"]["message"]
        bad = api.post(f"/execute/{double}", json={"p0": "abc"})
        assert bad.status_code == 422
        assert "parameter 'p0' must be an integer" in bad.json()["error"]["message"]
        bad = api.post(f"/execute/{double}", json={"p0": 1.5})
        assert bad.status_code == 422
        bad = api.post(f"/execute/{double}", json={})
        assert bad.status_code == 422
        assert "'p0'" in bad.json()["error"]["message"]
        bad = api.post(
            f"/file/module/{_upload(api, 'double')}/upload",
            json={"double": {"method": "PUT", "parameters": []}},
        )
        assert bad.status_code == 422
        assert "method" in bad.json()["error"]["message"]
        in_use = api.delete("/file/module/double")
        assert in_use.status_code == 409
        assert "used by deployment" in in_use.text
        assert (
            api.post(
                "/file/manifest", content=b"{", headers={"content-type": "application/json"}
            ).status_code
            == 422
        )
        assert api.get("/file/module/nope/wasm").status_code == 404
        assert api.post("/execute/nope", json={}).status_code == 404


def test_device_token_reaches_only_its_own_deployments(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    server = _server(tmp_path)
    with server, server.client() as api:
        names = [unique_name("dev") for _ in range(2)]
        tokens = {n: _token(api, n) for n in names}
        for n in names:
            agent = AgentProcess(tmp_path / n, n, token=tokens[n]).start()
            agents.append(agent)
            api.post(
                "/file/device/discovery/register",
                json={"name": n, "port": agent.port, "addresses": ["127.0.0.1"]},
            )
        wait_until(lambda: all(d["description"] for d in _devices(api).values()), "described", 30)
        mine, other = names
        module = _upload(api, "double")
        deployment = _deploy(
            api,
            {
                "name": "theirs",
                "sequence": [{"device": other, "module": "double", "func": "double"}],
            },
        )

        def as_device(device: str) -> httpx.Client:
            return httpx.Client(
                base_url=server.url,
                headers={"Authorization": f"Bearer {tokens[device]}"},
                timeout=30,
            )

        with as_device(mine) as intruder, as_device(other) as owner:
            refused = intruder.get(f"/devices/{other}/deployments")
            assert refused.status_code == 403
            assert other in refused.json()["error"]["message"]
            assert intruder.get(f"/file/module/{module}/wasm").status_code == 403
            assert intruder.get(f"/file/module/{module}/description").status_code == 403
            assert intruder.post(f"/file/manifest/{deployment}").status_code == 403
            assert intruder.delete(f"/file/manifest/{deployment}").status_code == 403
            assert intruder.post(f"/execute/{deployment}", json={"p0": 1}).status_code == 403
            assert intruder.get("/file/manifest").status_code == 403
            assert intruder.get(f"/devices/{mine}/deployments").json() == []
            lying = intruder.post(
                "/device/logs",
                data={"logData": json.dumps({"deviceName": other, "message": "hi"})},
            )
            assert lying.status_code == 403

            own = owner.get(f"/devices/{other}/deployments")
            assert own.status_code == 200
            assert [d["_id"] for d in own.json()] == [deployment]
            assert own.json()[0]["part"]["deploymentId"] == deployment
            assert owner.get(f"/file/module/{module}/wasm").content == bytes(wat_bytes("double"))
            logged = owner.post(
                "/device/logs",
                data={"logData": json.dumps({"deviceName": other, "message": "hello"})},
            )
            assert logged.status_code == 200
            assert logged.json() == {"message": "Log received and saved"}
        assert api.get(f"/file/manifest/{deployment}").json()["state"] == "deployed"


FILE_FUNCTIONS = {
    "data_size": {"method": "GET", "output": "integer", "mounts": [{"name": "data.txt"}]},
    "input_size": {
        "method": "POST",
        "output": "integer",
        "mounts": [{"name": "input.bin", "stage": "execution"}],
    },
    "make_output": {
        "method": "GET",
        "parameters": [{"name": "n", "type": "integer"}],
        "output": "integer",
        "mounts": [{"name": "out.txt", "stage": "output"}],
    },
}


def test_files_reach_functions_and_follow_the_chain(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    """A data file attached to the module, a file sent with /execute, and an output file
    that the next device in the chain gets as its input."""
    server = _server(tmp_path)
    with server, server.client() as api:
        names = [unique_name("files"), unique_name("files")]
        for name in names:
            agent = AgentProcess(tmp_path / name, name, token=_token(api, name))
            agents.append(agent.start())
            registered = api.post(
                "/file/device/discovery/register",
                json={"name": name, "port": agent.port, "addresses": ["127.0.0.1"]},
            )
            assert registered.status_code == 204, registered.text
        for name in names:
            wait_until(lambda n=name: _devices(api)[n]["description"], "device described", 30)
        module = _upload(api, "files")
        described = api.post(
            f"/file/module/{module}/upload",
            data={"functions": json.dumps(FILE_FUNCTIONS)},
            files={"data.txt": ("data.txt", b"0123456789")},
        )
        assert described.status_code == 200, described.text
        paths = described.json()["description"]["paths"]
        body = paths["/{deployment}/modules/files/input_size"]["post"]["requestBody"]
        assert body["content"]["multipart/form-data"]["schema"]["required"] == ["input.bin"]

        # A deployment file: the function reads what was attached to the module.
        data = _deploy(
            api, {"name": "data", "sequence": [{"module": "files", "func": "data_size"}]}
        )
        assert api.post(f"/execute/{data}", json={}).json()["result"] == ["10", None]

        # An execution file sent with /execute (multipart), checked by name first.
        sized = _deploy(
            api, {"name": "sized", "sequence": [{"module": "files", "func": "input_size"}]}
        )
        ran = api.post(f"/execute/{sized}", files={"input.bin": ("input.bin", b"abc")})
        assert ran.status_code == 200, ran.text
        assert ran.json()["result"] == ["3", []]
        missing = api.post(f"/execute/{sized}", json={})
        assert missing.status_code == 422
        assert "'input.bin' is missing" in missing.json()["error"]["message"]
        unknown = api.post(f"/execute/{sized}", files={"other.bin": ("other.bin", b"x")})
        assert unknown.status_code == 422
        assert "unknown file 'other.bin'" in unknown.json()["error"]["message"]

        # An output file, downloadable from the device, and passed along a chain: the
        # first device writes 7 bytes to out.txt, the second reads them as input.bin.
        made = _deploy(
            api,
            {
                "name": "made",
                "sequence": [{"device": names[0], "module": "files", "func": "make_output"}],
            },
        )
        result = api.post(f"/execute/{made}", json={"n": 7}).json()["result"]
        assert result[0] == "7"
        [url] = result[1]
        assert url.endswith("/files/out.txt")
        assert httpx.get(url, timeout=10).content == b"x" * 7
        chain = _deploy(
            api,
            {
                "name": "passed",
                "sequence": [
                    {"device": names[0], "module": "files", "func": "make_output"},
                    {"device": names[1], "module": "files", "func": "input_size"},
                ],
            },
        )
        ran = api.post(f"/execute/{chain}", json={"n": 5})
        assert ran.status_code == 200, ran.text
        assert ran.json()["result"] == ["5", []]


def test_a_device_that_moves_is_called_at_its_new_address_and_every_run_is_recorded(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    """corral keeps what a run reads in memory: a device registered again at another port
    (still active, so no status event) must be called there on the very next run. Health
    checks are rare here, so none of them notices the move first."""
    server = _server(tmp_path, device_health_seconds=3600)
    with server, server.client() as api:
        name = unique_name("moves")
        token = _token(api, name)
        first = AgentProcess(tmp_path / name, name, token=token)
        agents.append(first.start())

        def register(agent: AgentProcess) -> None:
            registered = api.post(
                "/file/device/discovery/register",
                json={"name": name, "port": agent.port, "addresses": ["127.0.0.1"]},
            )
            assert registered.status_code == 204, registered.text

        register(first)
        wait_until(lambda: _devices(api)[name]["description"], "device described", 30)
        _upload(api, "double")
        double = _deploy(
            api, {"name": "double", "sequence": [{"module": "double", "func": "double"}]}
        )
        ran = api.post(f"/execute/{double}", json={"p0": 21})
        assert ran.status_code == 200, ran.text
        assert ran.json()["fetched_from_device"] == f"127.0.0.1:{first.port}"

        # the same device (its home, its saved deployment) on another port
        moved = AgentProcess(tmp_path / name, name, token=token)
        agents.append(moved.start())
        assert moved.port != first.port
        register(moved)
        first.stop()
        ran = api.post(f"/execute/{double}", json={"p0": 21})
        assert ran.status_code == 200, ran.text
        assert ran.json() == {
            "result": ["42", None],
            "fetched_from_device": f"127.0.0.1:{moved.port}",
            "resultUrl": ran.json()["resultUrl"],
            "isInFailover": False,
        }

        def runs() -> int:
            found = api.get("/events", params={"kind": "deployment.executed", "limit": 10})
            return len(found.json())

        wait_until(lambda: runs() == 2, "both runs recorded", 10)
