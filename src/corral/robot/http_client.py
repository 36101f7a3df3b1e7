"""`HttpRobot`: the protocol's HTTP variant, for robots that cannot keep a socket open.

Standard library only (`urllib`), blocking calls: use it from a thread, or from asyncio
through `asyncio.to_thread`. The simulator also uses `request_json` to register robots.
"""

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from .errors import RobotHttpError, RobotRefused
from .messages import telemetry_fields
from .signing import sign

log = logging.getLogger(__name__)

LONG_POLL_MAX = 30.0  # the server waits at most this long
REMEMBERED_IDS = 4096


def request_json(
    method: str,
    url: str,
    token: str | None,
    body: Any = None,
    timeout: float = 10.0,
) -> Any:
    """One HTTP request with a JSON body and answer; None for an empty answer.

    Raises `RobotRefused` on 401/403, `RobotHttpError` on other statuses >= 400, and
    `OSError` (`urllib.error.URLError`) when the server cannot be reached.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"not an http(s):// URL: {url!r}")
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body, separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            raw = response.read()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        exc.close()
        if exc.code in (401, 403):
            raise RobotRefused(f"http {exc.code}", text[:200]) from None
        raise RobotHttpError(exc.code, text) from None
    return json.loads(raw) if raw.strip() else None


class HttpRobot:
    """One robot talking to corral over plain HTTP requests (blocking methods).

    Same arguments as `RobotClient`; `timeout` is per request (a long poll adds its wait).
    Signed robots send `n` = microseconds since 1970, kept strictly growing, so the counter
    still grows after the robot restarts.
    """

    def __init__(
        self,
        url: str,
        name: str,
        token: str,
        key: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"not an http(s):// URL: {url!r}")
        self.url = url.rstrip("/")
        self.name = name
        self.key = key
        self.timeout = timeout
        self._token = token
        self._n = 0
        self._n_lock = threading.Lock()
        self._base = f"{self.url}/fleet/robots/{quote(name, safe='')}"

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.key is None:
            return body
        with self._n_lock:
            self._n = max(self._n + 1, time.time_ns() // 1000)
            return sign(body, self.key, self._n)

    def _call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        return request_json(
            method, self._base + path, self._token, body, timeout=timeout or self.timeout
        )

    def telemetry(
        self,
        marker: str | None = None,
        lane: Sequence[str] | None = None,
        progress: float | None = None,
        distance: float | None = None,
        battery: float | None = None,
        status: str | None = None,
    ) -> None:
        """Say where the robot is (see `RobotClient.telemetry`)."""
        body = telemetry_fields(marker, lane, progress, distance, battery, status)
        self._call("POST", "/telemetry", self._body(body))

    def checkpoint(self, marker: str, **extra: Any) -> None:
        """Report reaching `marker`; raises if corral did not get it (retry it yourself)."""
        self._call("POST", "/checkpoint", self._body({"marker": marker, **extra}))

    def commands(self, after: int = 0, wait: float = 0.0) -> list[dict[str, Any]]:
        """Commands with an id above `after` not yet acknowledged, oldest first (an `estop`
        first); waits up to `wait` seconds (at most 30) for one to come."""
        wait = max(0.0, min(wait, LONG_POLL_MAX))
        query = urlencode({"after": after, "wait": f"{wait:g}"})
        found = self._call("GET", f"/commands?{query}", timeout=self.timeout + wait)
        return [c for c in found or [] if isinstance(c, dict)]

    def ack(self, ids: Iterable[int]) -> None:
        """Acknowledge commands (idempotent)."""
        self._call("POST", "/acks", self._body({"ids": list(ids)}))

    def poll_forever(
        self,
        handler: Callable[[dict[str, Any]], None],
        wait: float = 25.0,
        stop: threading.Event | None = None,
    ) -> None:
        """Long-poll for commands and give each to `handler`, then acknowledge it; until
        `stop` is set. Network errors are retried with backoff (0.2 s doubling to 5 s);
        `RobotRefused` is raised. An id already handled is acknowledged, not handled again;
        a command whose handler raises is not acknowledged (it comes back after a restart).
        """
        stop = stop or threading.Event()
        handled: OrderedDict[int, None] = OrderedDict()
        owed: list[int] = []  # handled, but the ack did not get through
        after = 0
        delay = 0.2
        while not stop.is_set():
            try:
                if owed:
                    self.ack(owed)
                    owed.clear()
                found = self.commands(after, wait)
            except RobotRefused:
                raise
            except (OSError, RobotHttpError, ValueError) as exc:
                log.info("robot %s: polling failed: %s", self.name, exc)
                stop.wait(delay * random.uniform(0.75, 1.25))
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            found.sort(key=lambda c: c.get("kind") != "estop")  # stable: estop first
            for command in found:
                cid = command.get("id")
                if not isinstance(cid, int):
                    continue
                after = max(after, cid)
                if cid not in handled:
                    try:
                        handler(command)
                    except Exception:
                        log.exception("robot %s: handler failed on command %s", self.name, cid)
                        continue
                    handled[cid] = None
                    while len(handled) > REMEMBERED_IDS:
                        handled.popitem(last=False)
                try:
                    self.ack([cid])
                except (OSError, RobotHttpError) as exc:
                    log.info("robot %s: ack %s failed (retried): %s", self.name, cid, exc)
                    owed.append(cid)
