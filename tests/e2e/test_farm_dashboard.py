"""The dashboard's farm page and `corral farm arm` show what the arm dispatcher waits for:
a job sent to an arm that never answers reads `blocked: waiting for the arm since T ...` in
headless Chromium and in the CLI."""

import os
import subprocess
from pathlib import Path

from playwright.sync_api import expect
from tests.support.browser import Guard, chromium
from tests.support.farm import Names
from tests.support.server import ADMIN, ThreadServer, corral_command, wait_until

from corral.config import Settings


def test_the_farm_page_shows_the_wait_on_the_arm(tmp_path: Path) -> None:
    names = Names.fresh()  # no arm listens on these topics: the job gets no answer
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url="",
        mdns_enabled=False,
        **names.settings(),
    )
    with ThreadServer(settings) as server, server.client() as api:
        wait_until(lambda: all(b["connected"] for b in api.get("/brokers").json()), "brokers")
        task = api.post("/tasks", json={"kind": "homing", "target": "robot_arm"}).json()
        wait_until(lambda: api.get("/farm/arm").json()["blocked"], "the dispatcher waiting")
        listed = subprocess.run(
            [*corral_command(), "farm", "arm"],
            env={**os.environ, "CORRAL_URL": server.url, "CORRAL_TOKEN": ADMIN},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "robot_arm: sent" in listed.stdout
        assert "blocked: waiting for the arm since " in listed.stdout
        assert f"task {task['id']} sent, no answer yet" in listed.stdout
        guard = Guard()
        with chromium() as browser:
            page = browser.new_page()
            guard.attach(page)
            page.goto(f"{server.url}/ui/#farm")
            page.wait_for_selector("#signin:not([hidden]), #page[data-ready=true]")
            if page.locator("#signin").is_visible():
                page.fill("#token", ADMIN)
                page.press("#token", "Enter")
            blocked = page.locator("#arm-blocked")
            expect(blocked).to_contain_text("blocked: waiting for the arm since ", timeout=20_000)
            expect(blocked).to_contain_text(f"task {task['id']} sent, no answer yet")
        assert guard.outside == []
