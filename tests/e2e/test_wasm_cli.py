"""Wasm devices through `corral serve` and the CLI: two real `corral agent` processes added
by hand, the example modules pushed and described, the example chain deployed and run
(16 -> 42), the Wasm-IoT API on its own port without a token, `corral wasm export` imported
by a second server, and bad CLI input refused with exit status 2.
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.agents import REPO_ROOT, AgentProcess, unique_name, wat_bytes
from tests.support.server import ADMIN, ServeProcess, free_port, run_cli, wait_until

EXAMPLE = REPO_ROOT / "examples" / "wasm"
MODULES = EXAMPLE / "modules"


@dataclass
class Cluster:
    serve: ServeProcess
    seed: str  # the Wasm-IoT API: its own port, no token
    agents: list[AgentProcess]


def _serve(workdir: Path, wasmiot: int = 0, **extra: str) -> tuple[ServeProcess, str]:
    """`corral serve` with the Wasm-IoT API on a second, anonymous port; (serve, its URL)."""
    wasmiot = wasmiot or free_port()
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_WASMIOT_PORT": str(wasmiot),
        "CORRAL_WASMIOT_ANONYMOUS": "true",
        "CORRAL_DEVICE_HEALTH_SECONDS": "0.5",
        **extra,
    }
    return ServeProcess(workdir, env), f"http://127.0.0.1:{wasmiot}"


def _ok(serve: ServeProcess, *args: str) -> str:
    done = run_cli(serve, *args)
    assert done.returncode == 0, f"corral {' '.join(args)}: {done.stderr}{done.stdout}"
    return done.stdout


def _json(serve: ServeProcess, *args: str) -> Any:
    return json.loads(_ok(serve, "--json", *args))


def _build(folder: Path) -> dict[str, Path]:
    """The example modules compiled by examples/wasm/build.py into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("double", "add_ten"):
        (folder / f"{name}.wat").write_text((MODULES / f"{name}.wat").read_text())
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "build.py"), str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {name: folder / f"{name}.wasm" for name in ("double", "add_ten")}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    serve, seed = _serve(tmp_path / "serve")
    agents: list[AgentProcess] = []
    serve.start()
    try:
        for _ in range(2):
            name = unique_name("wasm-cli")
            token = _json(serve, "device", "token", name)["token"]
            agent = AgentProcess(tmp_path / name, name, token=token)
            agents.append(agent)
            agent.start()
            added = _ok(serve, "device", "add", name, f"127.0.0.1:{agent.port}")
            assert f"device {name} added at 127.0.0.1:{agent.port}" in added
        yield Cluster(serve, seed, agents)
    finally:
        for agent in agents:
            agent.stop()
        serve.stop()


def _push_chain(serve: ServeProcess, wasm: dict[str, Path]) -> None:
    for name, path in wasm.items():
        described = EXAMPLE / "functions" / f"{name}.yml"
        pushed = _ok(serve, "module", "push", str(path), "--describe", str(described))
        assert pushed.startswith(f"module {name} uploaded: ")
    created = _ok(serve, "deployment", "create", str(EXAMPLE / "chain.yml"))
    assert "deployed" in created.splitlines()[-1], created


def test_cli_flow_and_bad_input(cluster: Cluster, tmp_path: Path) -> None:
    serve = cluster.serve
    wasm = _build(tmp_path / "built")
    names = [a.name for a in cluster.agents]

    listed = _ok(serve, "device", "ls")
    for name in names:
        line = next(row for row in listed.splitlines() if row.startswith(name))
        assert line.split()[2:4] == ["active", "register"], listed
    devices = _json(serve, "device", "ls")
    assert {d["name"] for d in devices} == set(names)
    assert all("wasi_snapshot_preview1" in d["description"]["supervisorInterfaces"]
               for d in devices)  # fmt: skip

    pushed = _json(
        serve, "module", "push", str(wasm["double"]), "--describe",
        str(EXAMPLE / "functions" / "double.yml"),
    )  # fmt: skip
    assert pushed["name"] == "double"
    assert pushed["outcome"] == "uploaded"
    assert pushed["functions"] == ["double"]
    again = _json(serve, "module", "push", str(wasm["double"]))
    assert again == {"id": pushed["id"], "name": "double", "outcome": "unchanged"}
    added = _ok(
        serve, "module", "push", str(wasm["add_ten"]), "--describe",
        str(EXAMPLE / "functions" / "add_ten.yml"),
    )  # fmt: skip
    assert added.startswith("module add_ten uploaded: ")

    table = _ok(serve, "module", "ls")
    assert pushed["id"] in table
    assert "add_ten" in table
    modules = {m["name"]: m for m in _json(serve, "module", "ls")}
    assert set(modules) == {"double", "add_ten"}
    assert modules["double"]["functions"]["double"]["parameters"] == [
        {"name": "x", "type": "integer"}
    ]
    assert modules["double"]["wasm"]["size"] == wasm["double"].stat().st_size

    described = json.loads(_ok(serve, "module", "describe", "double"))
    operation = described["paths"]["/{deployment}/modules/double/double"]["get"]
    assert [p["name"] for p in operation["parameters"]] == ["deployment", "x"]

    created = _ok(serve, "deployment", "create", str(EXAMPLE / "chain.yml"))
    assert created.splitlines()[-1].endswith(" deployed"), created
    assert sorted(line.split(":")[0].strip() for line in created.splitlines()[:-1]) == sorted(
        names
    ), "placement spreads the two steps over the two devices"
    deployments = _json(serve, "deployment", "ls")
    assert [(d["name"], d["state"]) for d in deployments] == [("chain", "deployed")]
    chain = [f"{s['module_name']}.{s['func']}" for s in deployments[0]["steps"]]
    assert chain == ["double.double", "add_ten.add_ten"]
    assert "double.double@" in _ok(serve, "deployment", "ls")

    assert _ok(serve, "deployment", "run", "chain", "-p", "x=16").strip() == "42"
    ran = _json(serve, "deployment", "run", "chain", "-p", "x=5")
    assert ran["result"] == ["20", None]
    assert ran["isInFailover"] is False

    refused = run_cli(serve, "module", "rm", "double")
    assert refused.returncode == 2, refused.stdout
    assert "used by deployment 'chain'" in refused.stderr
    assert "double" in _ok(serve, "module", "ls")

    # Bad input: exit status 2 and a message naming what is wrong.
    text = tmp_path / "notes.txt"
    text.write_text("not a module\n")
    bad = run_cli(serve, "module", "push", str(text))
    assert bad.returncode == 2, bad.stdout
    assert "notes.txt is not a WebAssembly binary" in bad.stderr
    bad = run_cli(serve, "deployment", "run", "chain", "-p", "x=abc")
    assert bad.returncode == 2, bad.stdout
    assert "parameter 'x' must be an integer" in bad.stderr
    bad = run_cli(serve, "deployment", "run", "chain", "-p", "x")
    assert bad.returncode == 2
    assert "'x'" in bad.stderr
    assert _ok(serve, "deployment", "run", "chain", "-p", "x=16").strip() == "42"


def test_seed_api_without_a_token(cluster: Cluster) -> None:
    seed = cluster.seed
    unknown = httpx.get(f"{seed}/nothing")
    assert unknown.status_code == 404
    assert unknown.json() == {"err": "Bad URL"}

    devices = httpx.get(f"{seed}/file/device")
    assert devices.status_code == 200, devices.text
    assert {d["_id"] for d in devices.json()} == {a.name for a in cluster.agents}
    for device in devices.json():
        assert set(device) >= {"_id", "communication", "status"}
        assert device["status"] == "active"
        assert device["communication"]["addresses"] == ["127.0.0.1"]
    # The same route on corral's own port wants a token.
    assert httpx.get(f"{cluster.serve.url}/file/device").status_code == 401

    ids = {}
    for name in ("double", "add_ten"):
        binary = bytes(wat_bytes(name))
        uploaded = httpx.post(
            f"{seed}/file/module",
            data={"name": name},
            files={"module": (f"{name}.wasm", binary, "application/wasm")},
        )
        assert uploaded.status_code == 201, uploaded.text
        ids[name] = uploaded.json()["id"]
    described = httpx.post(
        f"{seed}/file/module/{ids['double']}/upload",
        json={"double": {"method": "GET", "parameters": [{"name": "x", "type": "integer"}]}},
    )
    assert described.status_code == 200, described.text

    manifest = {
        "name": "seeded",
        "sequence": [
            {"device": None, "module": ids["double"], "func": "double"},
            {"device": None, "module": ids["add_ten"], "func": "add_ten"},
        ],
    }
    created = httpx.post(f"{seed}/file/manifest", json=manifest)
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith("text/plain")
    deployment = created.text
    deployed = httpx.post(f"{seed}/file/manifest/{deployment}", timeout=60)
    assert deployed.status_code == 200, deployed.text
    assert deployed.json()["state"] == "deployed"

    ran = httpx.post(f"{seed}/execute/{deployment}", json={"x": 16}, timeout=60)
    assert ran.status_code == 200, ran.text
    body = ran.json()
    assert set(body) == {"result", "fetched_from_device", "resultUrl", "isInFailover"}
    assert body["result"] == ["42", None]
    assert body["isInFailover"] is False
    assert body["resultUrl"].startswith("http://127.0.0.1:")

    wrong = httpx.post(f"{seed}/execute/{deployment}", json={"x": "abc"})
    assert wrong.status_code == 400, "bad input is 400 on the orchestrator's port"
    assert "'x'" in wrong.json()["errorText"]
    assert wrong.json()["error"] == wrong.json()["errorText"]


def test_export_then_import_in_a_new_server(cluster: Cluster, tmp_path: Path) -> None:
    first = cluster.serve
    _push_chain(first, _build(tmp_path / "built"))
    folder = tmp_path / "init"
    exported = _ok(first, "wasm", "export", str(folder))
    assert "exported 2 device(s), 2 module(s), 1 deployment(s)" in exported
    assert sorted(p.name for p in (folder / "files").iterdir()) == ["add_ten.wasm", "double.wasm"]

    def inventory(base: str) -> tuple[Any, Any, Any]:
        devices = httpx.get(f"{base}/file/device").json()
        modules = httpx.get(f"{base}/file/module").json()
        manifests = httpx.get(f"{base}/file/manifest").json()
        return (
            {d["name"]: d["communication"] for d in devices},
            {m["name"]: m["wasm"]["sha256"] for m in modules},
            sorted(d["name"] for d in manifests),
        )

    before = inventory(cluster.seed)
    assert set(before[0]) == {a.name for a in cluster.agents}
    assert set(before[1]) == {"double", "add_ten"}
    assert before[2] == ["chain"]
    first.stop()

    # The agents hold device tokens of the first server, which the second one does not
    # know: it tells them to fetch modules from its anonymous Wasm-IoT port instead.
    wasmiot = free_port()
    second, seed = _serve(
        tmp_path / "second",
        wasmiot,
        CORRAL_INIT_DIR=str(folder),
        CORRAL_PUBLIC_URL=f"http://127.0.0.1:{wasmiot}",
    )
    second.start()
    try:
        assert inventory(seed) == before
        # It was deployed when exported, so the import deploys it: each agent downloads its
        # module from this server while the import runs.
        manifests = httpx.get(f"{seed}/file/manifest").json()
        assert [(d["name"], d["state"]) for d in manifests] == [("chain", "deployed")], [
            d["reason"] for d in manifests
        ]
        wait_until(
            lambda: all(d["description"] for d in httpx.get(f"{seed}/file/device").json()),
            "the imported devices described",
            30,
        )
        assert _ok(second, "deployment", "run", "chain", "-p", "x=16").strip() == "42"
    finally:
        second.stop()
