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
            raise RobotRefused(f"http {exc.code}", text[:200], _error_code(text)) from None
        raise RobotHttpError(exc.code, text) from None
    return json.loads(raw) if raw.strip() else None


def _error_code(text: str) -> str:
    """The `error.code` of a corral error answer; empty if it is not one."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return ""
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else ""


class HttpRobot:
    """One robot talking to corral over plain HTTP requests (blocking methods).

    Same arguments as `RobotClient`; `timeout` is per request (a long poll adds its wait).
    Signed robots ask corral for a nonce first and sign every body over it, with `n` =
    microseconds since 1970, kept strictly growing; when corral no longer knows the nonce
    (it restarted, or another client of the robot asked for a new one) a new one is asked
    for and the message signed again, once.
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
        self._nonce: str | None = None
        self._base = f"{self.url}/fleet/robots/{quote(name, safe='')}"

    def _post(self, path: str, body: dict[str, Any]) -> None:
        """POST a message, signed when the robot is (see the class)."""
        if self.key is None:
            self._call("POST", path, body)
            return
        for attempt in (1, 2):
            nonce = self._nonce
            if nonce is None:
                answer = self._call("POST", "/nonce")
                nonce = self._nonce = str(answer["nonce"])
            with self._n_lock:
                self._n = max(self._n + 1, time.time_ns() // 1000)
                signed = sign(body, self.key, self._n, nonce)
            try:
                self._call("POST", path, signed)
                return
            except RobotRefused as exc:
                if exc.reason != "bad_signature" or attempt == 2:
                    raise
                self._nonce = None

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
        self._post("/telemetry", body)

    def checkpoint(self, marker: str, **extra: Any) -> None:
        """Report reaching `marker`; raises if corral did not get it (retry it yourself)."""
        self._post("/checkpoint", {"marker": marker, **extra})

    def commands(self, after: int = 0, wait: float = 0.0) -> list[dict[str, Any]]:
        """Commands with an id above `after` not yet acknowledged, oldest first (an `estop`
        first); waits up to `wait` seconds (at most 30) for one to come."""
        wait = max(0.0, min(wait, LONG_POLL_MAX))
        query = urlencode({"after": after, "wait": f"{wait:g}"})
        found = self._call("GET", f"/commands?{query}", timeout=self.timeout + wait)
        return [c for c in found or [] if isinstance(c, dict)]

    def ack(self, ids: Iterable[int]) -> None:
        """Acknowledge commands (idempotent)."""
        self._post("/acks", {"ids": list(ids)})

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
