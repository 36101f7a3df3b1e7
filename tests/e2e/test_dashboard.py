"""The dashboard in real headless Chromium against a corral with real data: a stack on the
local engine, a session, a Wasm device with a deployment, a print farm's records, a fleet
of simulated robots driving, tasks and events.

Every page is loaded and photographed (test-artifacts/dashboard/); a click on Stop stops a
real container and the page shows it without a reload; a module uploaded and a deployment
run in the page show the result; the fleet map moves while the robots drive; a viewer is
not offered what it may not do; and no page ever asks for anything off this host.
"""

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect
from tests.support.agents import AgentProcess, unique_name, wat_bytes
from tests.support.browser import Guard, chromium, screenshot
from tests.support.engines import LOCAL_URL, engine_container_ids, running_container_ids
from tests.support.server import ADMIN, ServeProcess, wait_until

from corral.model.fleet_map import grid_map
from corral.robot.sim import FleetSim, run_fleet

STACK = """\
services:
  web:
    image: local/busybox:1
    command: ["sh", "-c", "while true; do echo serving; sleep 1; done"]
    stop_grace_period: 1s
"""
TEMPLATE = """\
x-corral-template:
  name: pause
  description: one container that waits
  parameters:
    seconds: {type: int, default: 120, min: 1, max: 3600}
  resources: {cpus: 0.1, memory: 16M}
services:
  waiter:
    image: local/busybox:1
    command: ["sleep", "${seconds}"]
"""
PAGES = ("hosts", "stacks", "sessions", "devices", "farm", "fleet", "tasks", "events")


class Robots:
    """Simulated robots driving in a thread of their own (their own event loop)."""

    def __init__(self, url: str, fmap: dict[str, Any]) -> None:
        self.url, self.fmap = url, fmap
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.sim: FleetSim | None = None

    def __enter__(self) -> "Robots":
        self.thread.start()
        work = run_fleet(
            self.url,
            ADMIN,
            self.fmap,
            3,
            prefix="dash",
            speed=0.8,
            rate=10.0,
            start_markers=["r0c0", "r0c5", "r5c0"],
        )
        self.sim = asyncio.run_coroutine_threadsafe(work, self.loop).result(60)
        return self

    def __exit__(self, *_: Any) -> None:
        if self.sim is not None:
            asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def corral_with_data(local_engine: str, tmp_path: Path) -> Iterator[tuple[ServeProcess, Any]]:
    leftovers = engine_container_ids(LOCAL_URL, "corral.stack=dash")
    if leftovers:
        subprocess.run(["docker", "rm", "-f", *leftovers], check=True, capture_output=True)
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": local_engine,
        "CORRAL_MDNS_ENABLED": "false",
        "CORRAL_DEVICE_HEALTH_SECONDS": "1",
        "CORRAL_SESSION_GRACE_SECONDS": "1",
    }
    serve = ServeProcess(tmp_path / "corral", env).start()
    headers = {"Authorization": f"Bearer {ADMIN}"}
    api = httpx.Client(base_url=serve.url, headers=headers, timeout=60)
    agent: AgentProcess | None = None
    session_id = ""
    try:
        wait_until(lambda: api.get("/hosts").json(), "the local host registered")
        applied = api.post("/stacks", json={"name": "dash", "file": STACK})
        assert applied.status_code in (200, 201), applied.text
        wait_until(
            lambda: engine_container_ids(LOCAL_URL, "corral.stack=dash"), "the stack's container"
        )
        assert api.post("/templates", json={"file": TEMPLATE}).status_code == 201
        session = api.post("/templates/pause/sessions", json={"params": {"seconds": 300}})
        assert session.status_code in (200, 201), session.text
        session_id = session.json()["id"]
        device = unique_name("dash")
        token = api.post("/tokens", json={"name": device, "role": "device"}).json()["token"]
        agent = AgentProcess(tmp_path / device, device, token=token).start()
        registered = api.post(
            "/file/device/discovery/register",
            json={"name": device, "port": agent.port, "addresses": ["127.0.0.1"]},
        )
        assert registered.status_code == 204
        wait_until(lambda: api.get(f"/file/device/{device}").json()["description"], "described")
        files = {"module": ("add_ten.wasm", bytes(wat_bytes("add_ten")))}
        assert api.post("/file/module", data={"name": "add_ten"}, files=files).is_success
        for kind, path, body in (
            ("rack", "/farm/racks/rack-1", {"position": 0, "slots": 4}),
            ("printer", "/farm/printers/p1", {"bed_type": "pei", "position": 1}),
            ("printer", "/farm/printers/p2", {"bed_type": "pei", "position": 2}),
            ("bed", "/farm/beds/b1", {"type": "pei", "rack": "rack-1", "slot": 1}),
        ):
            assert api.put(path, json=body).is_success, (kind, path)
        api.put("/farm/printers/p1/state", json={"state": "printing"})
        fmap = grid_map("yard", 6, 6).as_dict()
        assert api.post("/fleet/maps", json=fmap).status_code == 201
        with Robots(serve.url, fmap):
            yield serve, {"api": api, "device": device, "agent": agent}
    finally:
        if agent is not None:
            agent.stop()
        api.delete("/stacks/dash")
        if session_id:  # its container and network go too: nothing is left on the engine
            ended = api.delete(f"/sessions/{session_id}")
            assert ended.json()["cleaned_at"], ended.text
        api.close()
        serve.stop()


def _until(page: Page, check: Callable[[], object], what: str, limit: float = 60.0) -> None:
    """wait_until that lets the page run meanwhile: the guard's route handler passes the
    page's requests on only while this thread is inside a Playwright call, so a plain
    sleep would hold back the very request (a click's fetch) being waited for."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(100)


def _open(page: Page, url: str, name: str, guard: Guard, token: str = ADMIN) -> None:
    page.goto(f"{url}/ui/#{name}")
    try:
        page.wait_for_selector("#signin:not([hidden]), #page[data-ready=true]", timeout=60_000)
    except PlaywrightError as exc:
        raise AssertionError(f"page {name} never came up: {guard.report(page)}") from exc
    if page.locator("#signin").is_visible():
        page.fill("#token", token)
        page.press("#token", "Enter")
    # The page shown is the one asked for, and it has rendered (a hash change within the
    # dashboard keeps the document: readiness is reset for each page).
    current = page.locator(f'#nav a[href="#{name}"][aria-current="page"]')
    try:
        expect(current).to_have_count(1, timeout=20_000)
        expect(page.locator("#page[data-ready=true] h2")).to_be_visible(timeout=20_000)
    except AssertionError as exc:
        raise AssertionError(f"page {name} is not up: {exc}; {guard.report(page)}") from exc


def test_the_dashboard_shows_and_operates_everything(
    corral_with_data: tuple[ServeProcess, Any],
) -> None:
    serve, data = corral_with_data
    api: httpx.Client = data["api"]
    guard = Guard()
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1024, "height": 768})
        page = context.new_page()
        guard.attach(page)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        # Every page loads with real data.
        expectations = {
            "hosts": "local",
            "stacks": "web",
            "sessions": "pause",
            "devices": data["device"],
            "farm": "p1",
            "fleet": "dash-1",
            "tasks": "goto",
            "events": "stack.",
        }
        task = api.post(
            "/tasks", json={"kind": "goto", "target": "fleet", "params": {"marker": "r3c3"}}
        )
        assert task.status_code == 201, task.text
        for name in PAGES:
            _open(page, serve.url, name, guard)
            try:
                expect(page.locator("#page")).to_contain_text(expectations[name], timeout=20_000)
            except AssertionError as exc:
                raise AssertionError(f"page {name}: {exc}; {guard.report(page)}") from exc
            screenshot(page, f"{name}")

        # Stop a real container from the stacks page; the page follows without a reload.
        _open(page, serve.url, "stacks", guard)
        marker = page.evaluate("() => { window.__same = 1; return 1; }")
        page.locator('button[data-stack="dash"][data-service="web"][data-action="stop"]').click()
        _until(
            page,
            lambda: not running_container_ids(LOCAL_URL, "corral.stack=dash"),
            "the web container stopped on the engine",
        )
        row = page.locator('tr[data-stack="dash"][data-service="web"]').first
        expect(row).to_have_attribute("data-state", "stopped", timeout=20_000)
        assert page.evaluate("() => window.__same") == marker, "no reload happened"
        screenshot(page, "stacks-after-stop")

        # Apply a stack file from the same page: a real container, shown without a reload.
        page.fill("#stack-name", "typed")
        page.select_option("#stack-mode", "containers")
        page.fill("#stack-file", STACK)
        page.click("#stack-apply")
        expect(page.locator("#stack-apply-result")).to_contain_text("typed", timeout=60_000)
        _until(
            page,
            lambda: bool(running_container_ids(LOCAL_URL, "corral.stack=typed")),
            "the applied stack's container running on the engine",
        )
        expect(page.locator('tr[data-stack="typed"][data-service="web"]').first).to_be_visible(
            timeout=20_000
        )
        assert page.evaluate("() => window.__same") == marker, "no reload happened"
        assert api.get("/stacks/typed").json()["mode"] == "containers"
        assert api.delete("/stacks/typed").status_code == 200

        # Upload a module and run a deployment from the devices page.
        _open(page, serve.url, "devices", guard)
        form = page.locator("#module-upload")
        form.locator('input[type="file"]').set_input_files(
            {
                "name": "double.wasm",
                "mimeType": "application/wasm",
                "buffer": bytes(wat_bytes("double")),
            }
        )
        form.locator('input[name="name"]').fill("double")
        form.locator('button[type="submit"]').click()
        expect(page.locator('[data-module="double"]').first).to_be_visible(timeout=20_000)
        deployment = api.post(
            "/file/manifest",
            json={"name": "web-run", "sequence": [{"module": "double", "func": "double"}]},
        ).text
        assert api.post(f"/file/manifest/{deployment}").status_code == 200
        run = page.locator(f'[data-deployment="{deployment}"] form').first
        expect(run).to_be_visible(timeout=20_000)
        run.locator("input").first.fill("21")
        run.locator('button[type="submit"]').click()
        expect(page.locator("#run-result")).to_contain_text("42", timeout=20_000)
        screenshot(page, "devices-after-run")

        # A function that takes a file: the run form offers a file input for it.
        module = api.post(
            "/file/module",
            data={"name": "files"},
            files={"module": ("files.wasm", bytes(wat_bytes("files")))},
        ).json()["id"]
        described = api.post(
            f"/file/module/{module}/upload",
            json={
                "input_size": {
                    "method": "POST",
                    "output": "integer",
                    "mounts": [{"name": "input.bin", "stage": "execution"}],
                }
            },
        )
        assert described.status_code == 200, described.text
        sized = api.post(
            "/file/manifest",
            json={"name": "web-file", "sequence": [{"module": "files", "func": "input_size"}]},
        ).text
        assert api.post(f"/file/manifest/{sized}").status_code == 200
        run = page.locator(f'[data-deployment="{sized}"] form').first
        expect(run.locator('input[type="file"]')).to_be_visible(timeout=20_000)
        run.locator('input[type="file"]').set_input_files(
            {"name": "photo.bin", "mimeType": "application/octet-stream", "buffer": b"1234"}
        )
        run.locator('button[type="submit"]').click()
        expect(page.locator("#run-result output")).to_have_text("4", timeout=20_000)

        # The fleet map moves while the robots drive.
        robot = api.get("/fleet/robots/dash-1").json()
        assert robot["map"] == "yard"
        api.post("/fleet/missions", json={"robot": "dash-1", "goal": "r0c4"})
        _open(page, serve.url, "fleet", guard)
        dot = page.locator('circle.robot[data-robot="dash-1"]')
        expect(dot).to_be_visible(timeout=20_000)
        before = (dot.get_attribute("cx"), dot.get_attribute("cy"))
        deadline = time.monotonic() + 30
        while (dot.get_attribute("cx"), dot.get_attribute("cy")) == before:
            assert time.monotonic() < deadline, "the robot never moved on the map"
            page.wait_for_timeout(200)
        screenshot(page, "fleet-moving")
        page.locator('[data-action="broadcast-stop"]').click()
        _until(
            page,
            lambda: api.get("/events", params={"kind": "fleet.stop"}).json(),
            "the broadcast stop went out",
        )

        # A tablet-sized screen, keyboard only: the navigation is reachable by Tab.
        page.set_viewport_size({"width": 800, "height": 1100})
        _open(page, serve.url, "hosts", guard)
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "() => document.activeElement && document.activeElement.textContent"
        )
        assert focused, "the keyboard reaches the page's links"
        screenshot(page, "hosts-tablet")
        context.close()

        # A viewer sees data but no buttons that change anything.
        viewer = api.post("/tokens", json={"name": "watcher", "role": "viewer"}).json()["token"]
        context = browser.new_context(viewport={"width": 1024, "height": 768})
        page = context.new_page()
        guard.attach(page)
        _open(page, serve.url, "stacks", guard, viewer)
        expect(page.locator("#page")).to_contain_text("web")
        assert page.locator('[data-action="stop"]').count() == 0
        _open(page, serve.url, "fleet", guard, viewer)
        assert page.locator('[data-action="broadcast-stop"]').count() == 0
        screenshot(page, "stacks-viewer")
        context.close()

        # A page whose script failed to load as the dashboard loaded still opens: the
        # router fetches it again when it is asked for.
        context = browser.new_context(viewport={"width": 1024, "height": 768})
        page = context.new_page()
        guard.attach(page)
        page.route("**/pages/farm.js", lambda route: route.abort())
        _open(page, serve.url, "hosts", guard)
        page.unroute("**/pages/farm.js")
        page.click('#nav a[href="#farm"]')
        expect(page.locator("#page h2")).to_have_text("Print farm", timeout=20_000)
        expect(page.locator("#page")).to_contain_text("p1")
        context.close()

    assert guard.outside == [], f"requests left the host: {guard.outside}"
    assert len(guard.seen) > 20
    assert errors == [], errors
