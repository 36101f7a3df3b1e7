"""The dashboard's fleet page shows a VDA 5050 vehicle's operating mode and the errors it
reports, from its state messages (corral's simulator on a private Mosquitto with corral's
ACLs), and follows a change of mode live, in headless Chromium."""

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import expect
from tests.support.browser import Guard, chromium, screenshot
from tests.support.private_brokers import LockedMosquitto
from tests.support.server import ADMIN, ThreadServer, wait_until

from corral.config import Settings
from corral.robot.vda_sim import SimVehicle

LINE = {
    "name": "line",
    "markers": [{"id": f"n{i}", "x": 2.0 * i, "y": 0} for i in range(4)],
    "lanes": [[f"n{i}", f"n{i + 1}"] for i in range(3)],
}


@contextmanager
def driving(sim: SimVehicle) -> Iterator[SimVehicle]:
    """The simulated vehicle on its own event loop, in a thread, until the block ends."""
    done = threading.Event()

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(sim.run(stop))
        await asyncio.to_thread(done.wait)
        stop.set()
        await asyncio.sleep(0.3)  # it says OFFLINE
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    try:
        yield sim
    finally:
        done.set()
        thread.join(10)


def test_the_fleet_page_shows_a_vehicles_mode_and_errors(tmp_path: Path) -> None:
    broker = LockedMosquitto(tmp_path, [("acme", "dv1")]).start()
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url="",
        mdns_enabled=False,
        brokers={"vda": broker.corral_url},
        vda5050_broker="vda",
    )
    sim = SimVehicle(broker.vehicle_url("acme", "dv1"), "acme", "dv1", "n0", state_every=0.5)
    sim.operating_mode = "SEMIAUTOMATIC"
    try:
        with ThreadServer(settings) as server, server.client() as api, driving(sim):
            wait_until(lambda: api.get("/brokers").json()[0]["connected"], "the broker")
            assert api.post("/fleet/maps", json=LINE).status_code == 201
            body = {"name": "agv", "manufacturer": "acme", "serial_number": "dv1"}
            body |= {"map": "line", "marker": "n0"}
            assert api.post("/fleet/vda5050/vehicles", json=body).status_code == 201
            wait_until(lambda: api.get("/fleet/robots/agv").json()["state"] == "online", "online")
            dance = {"actionType": "dance", "actionId": "d1", "blockingType": "NONE"}
            custom = {"kind": "custom", "payload": {"actions": [dance | {"actionParameters": []}]}}
            assert api.post("/fleet/robots/agv/commands", json=custom).status_code == 201
            wait_until(
                lambda: api.get("/fleet/vda5050/vehicles/agv").json()["vda5050"]["errors"],
                "the vehicle's error in the API",
            )
            guard = Guard()
            with chromium() as browser:
                page = browser.new_page()
                guard.attach(page)
                page.goto(f"{server.url}/ui/#fleet")
                page.wait_for_selector("#signin:not([hidden]), #page[data-ready=true]")
                if page.locator("#signin").is_visible():
                    page.fill("#token", ADMIN)
                    page.press("#token", "Enter")
                row = page.locator('#robots tr[data-robot="agv"]')
                expect(row.locator(".vda-mode")).to_have_text("mode SEMIAUTOMATIC", timeout=20_000)
                error = row.locator('.vda-error[data-error-type="unsupportedAction"]')
                expect(error).to_contain_text("WARNING unsupportedAction: instant action dance")
                expect(row.locator(".vda-errors")).to_have_attribute("aria-label", "1 error")
                screenshot(page, "fleet-vda-vehicle")
                sim.operating_mode = "MANUAL"  # taken over by hand: the page follows
                expect(row.locator(".vda-mode")).to_have_text("mode MANUAL", timeout=20_000)
            assert guard.outside == []
    finally:
        broker.stop()
