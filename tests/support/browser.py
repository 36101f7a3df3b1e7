"""Headless Chromium for the dashboard tests: Debian's /usr/bin/chromium driven by
Playwright, a guard that fails on any request leaving the host, and a screenshot folder.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, Page, Request, Response, Route, sync_playwright
from playwright.sync_api import Error as PlaywrightError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as play:
        browser = play.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Guard:
    """Every request the page makes; requests to other hosts are aborted and kept."""

    seen: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)  # dashboard assets that did not load
    open: dict[Request, float] = field(default_factory=dict)  # requests with no answer yet
    console: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.route("**/*", self._route)
        page.on("request", self._sent)
        page.on("requestfinished", self._done)
        page.on("requestfailed", self._failed)
        page.on("response", self._answered)
        page.on("console", lambda message: self.console.append(message.text))

    def _sent(self, request: Request) -> None:
        self.open[request] = time.monotonic()

    def _done(self, request: Request) -> None:
        self.open.pop(request, None)

    def _failed(self, request: Request) -> None:
        self.open.pop(request, None)
        if "/ui/" in request.url:
            self.unloaded.append(f"{request.url}: {request.failure}")

    def report(self, page: Page) -> str:
        """What the page is waiting for and what went wrong so far: for a failing check."""
        now = time.monotonic()
        waiting = [
            f"{r.method} {r.url} ({now - t:.1f} s)"
            for r, t in self.open.items()
            if not r.url.endswith("/events/stream")
        ]
        try:
            state = page.evaluate(
                "() => ({ready: document.readyState, corral: typeof corral,"
                " banner: (document.getElementById('failure') || {}).textContent,"
                " signin: !(document.getElementById('signin') || {}).hidden,"
                " page: (document.getElementById('page') || {}).outerHTML})"
            )
        except PlaywrightError as exc:  # a report must not hide the failure
            state = {"error": str(exc)}
        if isinstance(state.get("page"), str):
            state["page"] = state["page"][:300]
        return (
            f"url {page.url}; state {state}; unanswered {waiting}; "
            f"not loaded {self.unloaded}; console {self.console[-10:]}"
        )

    def _answered(self, response: Response) -> None:
        if "/ui/" in response.url and response.status >= 400:
            self.unloaded.append(f"{response.url}: HTTP {response.status}")

    def _route(self, route: Route) -> None:
        url = route.request.url
        self.seen.append(url)
        host = urlsplit(url).hostname or ""
        if url.startswith(("data:", "blob:", "about:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
