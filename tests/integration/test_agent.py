"""`corral agent` as real processes on loopback: deploy from a bearer-checking file server,
a two-device chain, queued calls, limits, bad input, restart, and the mDNS advert."""

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from tests.support.agents import (
    AgentProcess,
    FileServer,
    deploy_part,
    endpoint,
    result_of,
    wat_bytes,
)
from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

TOKEN = "dev_test_token_0123456789"
SERVICE = "_webthing._tcp.local."


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    with FileServer(TOKEN) as server:
        for name in ("double", "add_ten", "spin", "grow", "sensor", "hello_wasi", "files"):
            server.add(f"{name}.wasm", wat_bytes(name))
        server.add("data.txt", b"some data\n")
        yield server


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    base = tmp_path_factory.mktemp("agents")
    first = AgentProcess(base / "a", token=TOKEN, args=("--fuel", "300000000"))
    second = AgentProcess(base / "b", token=TOKEN)
    with first, second:
        yield first, second


def deploy(agent: AgentProcess, part: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{agent.url}/deploy", json=part, timeout=60)


def test_chain_double_then_add_ten(
    pair: tuple[AgentProcess, AgentProcess], files: FileServer
) -> None:
    first, second = pair
    step2 = deploy_part(
        "chain", second.url, "add_ten", f"{files.url}/add_ten.wasm", {"add_ten": ("x",)}
    )
    assert deploy(second, step2).json() == {"status": "success"}
    to = endpoint(second.url, "chain", "add_ten", "add_ten")
    step1 = deploy_part(
        "chain", first.url, "double", f"{files.url}/double.wasm", {"double": ("x",)}, to=to
    )
    answer = deploy(first, step1)
    assert answer.status_code == 200, answer.text
    assert ("/double.wasm", f"Bearer {TOKEN}") in files.requests

    called = httpx.get(f"{first.url}/chain/modules/double/double", params={"x": 16}, timeout=60)
    assert called.status_code == 200, called.text
    result_url = called.json()["resultUrl"]
    assert result_url.startswith(f"{first.url}/request-history/chain:double:double:")
    entry = httpx.get(result_url, timeout=30)
    assert entry.status_code == 200, entry.text
    body = entry.json()
    assert body["success"] is True
    assert body["request_args"] == {"x": "16"}
    assert body["method"] == "GET"
    next_url = body["result"]["resultUrl"]
    assert next_url.startswith(f"{second.url}/request-history/chain:add_ten:add_ten:")
    final = httpx.get(next_url, timeout=30)
    assert final.status_code == 200
    assert final.json()["result"] == ["42", None]

    # redeploying the same id replaces it and still works
    assert deploy(first, step1).status_code == 200

    # POST queues and answers at once; the entry completes later
    queued = httpx.post(f"{first.url}/chain/modules/double/double?x=5", timeout=30)
    assert queued.status_code == 200
    done = result_of(queued.json()["resultUrl"])
    assert done.status_code == 200, done.text
    assert done.json()["method"] == "POST"
    assert result_of(done.json()["result"]["resultUrl"]).json()["result"] == ["20", None]

    history = httpx.get(f"{first.url}/request-history", timeout=30).json()
    assert {e["request_id"] for e in history} >= {
        result_url.rsplit("/", 1)[1],
        queued.json()["resultUrl"].rsplit("/", 1)[1],
    }


def test_next_step_unreachable(pair: tuple[AgentProcess, AgentProcess], files: FileServer) -> None:
    first, _ = pair
    dead = endpoint("http://127.0.0.1:9", "broken", "add_ten", "add_ten")
    part = deploy_part(
        "broken", first.url, "double", f"{files.url}/double.wasm", {"double": ("x",)}, to=dead
    )
    assert deploy(first, part).status_code == 200
    called = httpx.get(f"{first.url}/broken/modules/double/double?x=1", timeout=60)
    entry = httpx.get(called.json()["resultUrl"], timeout=30)
    assert entry.status_code == 500
    assert entry.json()["result"].startswith(
        "next step http://127.0.0.1:9/broken/modules/add_ten/add_ten failed: "
    )


def test_spin_out_of_fuel_while_health_answers(
    pair: tuple[AgentProcess, AgentProcess], files: FileServer
) -> None:
    first, _ = pair
    part = deploy_part("spinning", first.url, "spin", f"{files.url}/spin.wasm", {"spin": ()})
    assert deploy(first, part).status_code == 200
    queued = httpx.post(f"{first.url}/spinning/modules/spin/spin", timeout=30)
    assert queued.status_code == 200
    health = httpx.get(f"{first.url}/health", timeout=30)
    assert health.status_code == 200
    assert 0 <= health.json()["cpuUsage"] <= 1
    failed = result_of(queued.json()["resultUrl"])
    assert failed.status_code == 500
    assert failed.json()["success"] is False
    assert failed.json()["result"] == "out of fuel: the call used all 300000000 units (--fuel)"
    assert httpx.get(f"{first.url}/health", timeout=30).status_code == 200


def test_memory_cap(pair: tuple[AgentProcess, AgentProcess], files: FileServer) -> None:
    _, second = pair
    part = deploy_part("growing", second.url, "grow", f"{files.url}/grow.wasm", {"grow": ()})
    assert deploy(second, part).status_code == 200
    called = httpx.get(f"{second.url}/growing/modules/grow/grow", timeout=60)
    failed = httpx.get(called.json()["resultUrl"], timeout=30)
    assert failed.status_code == 500
    assert failed.json()["result"].startswith("memory limit: ")
    assert "64 MiB (--memory-mb)" in failed.json()["result"]


def test_bad_input(pair: tuple[AgentProcess, AgentProcess], files: FileServer) -> None:
    agent, _ = pair
    part = deploy_part("bad", agent.url, "double", f"{files.url}/double.wasm", {"double": ("x",)})
    assert deploy(agent, part).status_code == 200
    url = f"{agent.url}/bad/modules/double/double"

    wrong = httpx.get(url, params={"x": "abc"}, timeout=30)
    assert wrong.status_code == 400
    assert wrong.json() == {"err": "query parameter 'x': 'abc' is not an integer"}
    missing = httpx.get(url, timeout=30)
    assert missing.status_code == 400
    assert "'x'" in missing.json()["err"]
    too_big = httpx.get(url, params={"x": 2**40}, timeout=30)
    assert too_big.status_code == 400
    assert "parameter x" in too_big.json()["err"]

    for path, named in [
        ("/nope/modules/double/double", "unknown deployment 'nope'"),
        ("/bad/modules/other/double", "no module 'other'"),
        ("/bad/modules/double/triple", "no function 'triple'"),
    ]:
        answer = httpx.get(f"{agent.url}{path}?x=1", timeout=30)
        assert answer.status_code == 404
        assert named in answer.json()["err"]
    assert httpx.get(f"{agent.url}/no/such/url", timeout=30).json() == {"err": "Bad URL"}
    assert httpx.get(f"{agent.url}/request-history/nope", timeout=30).status_code == 404

    extra = {**part, "surprise": 1}
    answer = deploy(agent, extra)
    assert answer.status_code == 422
    assert answer.json() == {"err": "surprise: Extra inputs are not permitted"}
    bad_type = deploy_part("bad2", agent.url, "double", f"{files.url}/double.wasm", {"d": ("x",)})
    bad_type["endpoints"]["double"]["d"]["request"]["parameters"][0]["schema"]["type"] = "float"
    answer = deploy(agent, bad_type)
    assert answer.status_code == 422
    assert answer.json()["err"].startswith("endpoints.double.d.request.parameters.0.schema.type:")
    no_mounts = deploy_part("bad3", agent.url, "double", f"{files.url}/double.wasm", {"double": ()})
    del no_mounts["mounts"]["double"]["double"]["output"]
    answer = deploy(agent, no_mounts)
    assert answer.status_code == 422
    assert answer.json()["err"].startswith("mounts.double.double.output:")
    other = deploy_part("bad4", agent.url, "double", f"{files.url}/double.wasm", {"double": ()})
    other["modules"][0]["urls"]["other"] = ["data.txt"]
    answer = deploy(agent, other)
    assert answer.status_code == 422
    assert answer.json()["err"].startswith("modules.0.urls.other:")

    not_exported = deploy_part(
        "bad5", agent.url, "double", f"{files.url}/double.wasm", {"triple": ("x",)}
    )
    answer = deploy(agent, not_exported)
    assert answer.status_code == 422
    assert "exports no function 'triple'" in answer.json()["err"]
    sensor = deploy_part(
        "bad6", agent.url, "sensor", f"{files.url}/sensor.wasm", {"read_tenths": ()}
    )
    answer = deploy(agent, sensor)
    assert answer.status_code == 422
    assert "env.temperature" in answer.json()["err"]
    gone = deploy_part("bad7", agent.url, "double", f"{files.url}/missing.wasm", {"double": ()})
    answer = deploy(agent, gone)
    assert answer.status_code == 502
    assert answer.json()["err"] == f"download of {files.url}/missing.wasm failed: HTTP 404"
    not_json = httpx.post(f"{agent.url}/deploy", content=b"{", timeout=30)
    assert not_json.status_code == 400

    assert httpx.delete(f"{agent.url}/deploy/bad", timeout=30).json() == {"status": "success"}
    assert httpx.get(f"{url}?x=1", timeout=30).status_code == 404
    assert httpx.delete(f"{agent.url}/deploy/bad", timeout=30).status_code == 404


def test_description_health_and_register(pair: tuple[AgentProcess, AgentProcess]) -> None:
    _, agent = pair
    described = httpx.get(f"{agent.url}/.well-known/wasmiot-device-description", timeout=30)
    body = described.json()
    assert body["name"] == agent.name
    assert body["supervisorInterfaces"] == ["millis", "print_int", "wasi_snapshot_preview1"]
    assert body["platform"]["cpu"]["coreCount"] >= 1
    assert body["platform"]["memory"]["bytes"] > 0
    assert set(body["platform"]["system"]) == {"os", "arch"}
    bad = httpx.post(f"{agent.url}/register", json={"url": "ftp://x"}, timeout=30)
    assert bad.status_code == 422
    assert bad.json()["err"].startswith("url:")
    assert httpx.get(f"{agent.url}/health", timeout=30).headers["Custom-Orchestrator-Set"] in (
        "true",
        "false",
    )
    registered = httpx.post(
        f"{agent.url}/register", json={"url": "http://127.0.0.1:9/"}, timeout=30
    )
    assert registered.json() == {"status": "success"}
    assert httpx.get(f"{agent.url}/health", timeout=30).headers["Custom-Orchestrator-Set"] == "true"


def test_sensor_and_wasi(tmp_path: Path, files: FileServer) -> None:
    with AgentProcess(
        tmp_path / "warm", token=TOKEN, args=("--sensor", "temperature=21.5")
    ) as agent:
        assert f"corral agent {agent.name} at {agent.url}" in agent.output()
        assert "temperature" in agent.output()
        health = httpx.get(f"{agent.url}/health", timeout=30)
        assert health.headers["Custom-Orchestrator-Set"] == "false"
        part = deploy_part(
            "warm", agent.url, "sensor", f"{files.url}/sensor.wasm", {"read_tenths": ()}
        )
        assert deploy(agent, part).status_code == 200
        called = httpx.get(f"{agent.url}/warm/modules/sensor/read_tenths", timeout=60)
        assert httpx.get(called.json()["resultUrl"], timeout=30).json()["result"] == ["215", None]
        hello = deploy_part(
            "hi", agent.url, "hello_wasi", f"{files.url}/hello_wasi.wasm", {"hello": ()}
        )
        hello["modules"][0]["urls"]["other"] = {"data.txt": f"{files.url}/data.txt"}
        assert deploy(agent, hello).status_code == 200
        assert (tmp_path / "warm" / "deployments" / "hi" / "files" / "data.txt").read_bytes() == (
            b"some data\n"
        )
        called = httpx.get(f"{agent.url}/hi/modules/hello_wasi/hello", timeout=60)
        assert httpx.get(called.json()["resultUrl"], timeout=30).json()["result"] == ["0", None]


def test_failures_logged_to_the_orchestrator(tmp_path: Path, files: FileServer) -> None:
    args = ("--orchestrator", files.url, "--fuel", "1000000")
    with AgentProcess(tmp_path / "logs", token=TOKEN, args=args) as agent:
        assert httpx.get(f"{agent.url}/health", timeout=30).headers["Custom-Orchestrator-Set"] == (
            "true"
        )
        part = deploy_part("logged", agent.url, "spin", f"{files.url}/spin.wasm", {"spin": ()})
        assert deploy(agent, part).status_code == 200
        called = httpx.get(f"{agent.url}/logged/modules/spin/spin", timeout=60)
        assert httpx.get(called.json()["resultUrl"], timeout=30).status_code == 500

        def logged() -> list[dict[str, Any]]:
            found = []
            for path, auth, body in list(files.posts):
                if path == "/device/logs" and auth == f"Bearer {TOKEN}":
                    found.append(json.loads(parse_qs(body.decode())["logData"][0]))
            return [e for e in found if "out of fuel" in e["message"]]

        deadline = time.monotonic() + 30
        while not logged() and time.monotonic() < deadline:
            time.sleep(0.1)
        entries = logged()
        assert entries, files.posts
        assert entries[0]["deviceName"] == agent.name
        assert entries[0]["logLevel"] == "error"
        assert entries[0]["loggedAt"]


def test_restart_keeps_deployments(tmp_path: Path, files: FileServer) -> None:
    agent = AgentProcess(tmp_path / "keep", token=TOKEN).start()
    try:
        part = deploy_part(
            "kept", agent.url, "double", f"{files.url}/double.wasm", {"double": ("x",)}
        )
        assert deploy(agent, part).status_code == 200
        assert agent.stop() == 0
        agent.start()
        called = httpx.get(f"{agent.url}/kept/modules/double/double?x=21", timeout=60)
        assert called.status_code == 200, called.text
        assert httpx.get(called.json()["resultUrl"], timeout=30).json()["result"] == ["42", None]
    finally:
        agent.stop()


class _Watcher:
    """Records the `_webthing._tcp` service changes a real zeroconf browser sees."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, ServiceStateChange]] = []
        self.changed = threading.Condition()

    def on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        with self.changed:
            self.changes.append((name, state_change))
            self.changed.notify_all()

    def wait_for(self, name: str, state: ServiceStateChange, timeout: float = 30) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: (name, state) in self.changes, timeout):
                raise AssertionError(f"no {state.name} for {name} within {timeout} s")


def test_mdns_advert_and_goodbye(tmp_path: Path) -> None:
    zeroconf = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    watcher = _Watcher()
    browser = ServiceBrowser(zeroconf, SERVICE, handlers=[watcher.on_change])
    agent = AgentProcess(tmp_path / "mdns", mdns=True)
    try:
        agent.start()
        service = f"{agent.name}.{SERVICE}"
        watcher.wait_for(service, ServiceStateChange.Added)
        info = zeroconf.get_service_info(SERVICE, service, timeout=10_000)
        assert info is not None
        assert info.port == agent.port
        assert info.properties[b"address"] == b"127.0.0.1"
        assert info.properties[b"path"] == b"/"
        assert info.properties[b"tls"] == b"0"
        assert info.parsed_addresses() == ["127.0.0.1"]
        assert agent.stop() == 0
        watcher.wait_for(service, ServiceStateChange.Removed)
        assert "mDNS goodbye sent" in agent.output()
    finally:
        agent.stop()
        browser.cancel()
        zeroconf.close()


def test_execution_and_output_files_and_their_checks(
    pair: tuple[AgentProcess, AgentProcess], files: FileServer
) -> None:
    agent = pair[1]
    part = deploy_part(
        "io",
        agent.url,
        "files",
        f"{files.url}/files.wasm",
        {"input_size": (), "make_output": ("n",)},
    )
    part["mounts"]["files"]["input_size"]["execution"] = [{"path": "input.bin"}]
    part["mounts"]["files"]["make_output"]["output"] = [{"path": "out.txt"}]
    unsafe = json.loads(json.dumps(part))
    unsafe["deploymentId"] = "io-bad"
    for f in unsafe["endpoints"]["files"].values():
        f["path"] = f["path"].replace("/io/", "/io-bad/")
    unsafe["mounts"]["files"]["input_size"]["execution"] = [{"path": "../input.bin"}]
    refused = deploy(agent, unsafe)
    assert refused.status_code == 422
    assert "execution.0.path: '../input.bin' is not a plain file name" in refused.json()["err"]
    assert deploy(agent, part).json() == {"status": "success"}

    call = f"{agent.url}/io/modules/files/input_size"
    without = httpx.get(call, timeout=30)
    assert without.status_code == 400
    assert "needs the execution file 'input.bin'" in without.json()["err"]
    wrong = httpx.post(call, files={"other": ("other", b"x")}, timeout=30)
    assert wrong.status_code == 400
    assert "takes no file 'other'" in wrong.json()["err"]
    sent = httpx.post(call, files={"input.bin": ("input.bin", b"12345")}, timeout=30)
    assert sent.status_code == 200, sent.text
    entry = result_of(sent.json()["resultUrl"]).json()
    assert entry["result"] == ["5", []]
    assert entry["request_files"] == ["input.bin"]

    made = httpx.get(f"{agent.url}/io/modules/files/make_output", params={"n": 3}, timeout=30)
    entry = result_of(made.json()["resultUrl"]).json()
    [url] = entry["result"][1]
    assert httpx.get(url, timeout=10).content == b"xxx"
    assert httpx.get(url.replace("out.txt", "nope.txt"), timeout=10).status_code == 404
