"""The supervisor-protocol client: what corral asks of a device (description, health,
register, deploy, undeploy, call a function, read a result).

Used by the device and deployment services; every failure becomes `DeviceError` with text
that names the device and the request. A run's GETs (the function, its result URLs) go over
kept-alive connections of `keepalive.py`; everything else through one shared httpx client.
"""

import json
from typing import Any

import httpx

from corral.devices.keepalive import BadAnswer, KeepAlivePool

DESCRIPTION_PATH = "/.well-known/wasmiot-device-description"


class DeviceError(Exception):
    """A device did not answer, or answered with an error."""


class SupervisorClient:
    def __init__(self, timeout: float = 5.0) -> None:
        self.http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self.runs = KeepAlivePool(timeout)  # a run's GETs: the function, its results

    async def close(self) -> None:
        await self.http.aclose()
        await self.runs.close()

    async def _get(self, url: str, params: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """A run's GET over a kept-alive connection: (status, body)."""
        try:
            answer = await self.runs.get(url, params)
        except TimeoutError:
            raise DeviceError(f"GET {url}: no answer in time") from None
        except (OSError, BadAnswer) as exc:
            raise DeviceError(f"GET {url}: {exc.__class__.__name__}: {exc}") from None
        return answer.status, answer.body

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise DeviceError(f"{method} {url}: no answer in time") from None
        except httpx.HTTPError as exc:
            raise DeviceError(f"{method} {url}: {exc.__class__.__name__}: {exc}") from None

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = await self._call(method, url, **kwargs)
        if response.status_code >= 400:
            raise DeviceError(
                f"{method} {url}: HTTP {response.status_code}: {_said(_parsed(response.content))}"
            )
        try:
            return response.json()
        except ValueError:
            raise DeviceError(f"{method} {url}: the answer is not JSON") from None

    async def description(self, base: str) -> dict[str, Any]:
        data = await self._json("GET", base.rstrip("/") + DESCRIPTION_PATH)
        if not isinstance(data, dict):
            raise DeviceError(f"{base}: the description is not an object")
        return data

    async def health(self, base: str, orchestrator_host: str) -> tuple[dict[str, Any], bool]:
        """The health report and whether the device already knows its orchestrator.
        `orchestrator_host`: corral's host as the device reaches it; a supervisor compares
        it with the orchestrator it registered and stops answering a stranger."""
        response = await self._call(
            "GET", base.rstrip("/") + "/health", headers={"X-Forwarded-For": orchestrator_host}
        )
        if response.status_code >= 400:
            raise DeviceError(f"GET {base}/health: HTTP {response.status_code}")
        try:
            report = response.json()
        except ValueError:
            raise DeviceError(f"GET {base}/health: the answer is not JSON") from None
        known = response.headers.get("Custom-Orchestrator-Set", "").lower() == "true"
        return (report if isinstance(report, dict) else {"report": report}), known

    async def register(self, base: str, orchestrator_url: str) -> None:
        await self._json("POST", base.rstrip("/") + "/register", json={"url": orchestrator_url})

    async def deploy(self, base: str, part: dict[str, Any]) -> tuple[int, Any]:
        """POST the part; (status, answer) whatever the status, so failures can be reported."""
        response = await self._call("POST", base.rstrip("/") + "/deploy", json=part)
        return response.status_code, _parsed(response.content)

    async def undeploy(self, base: str, deployment_id: str) -> None:
        response = await self._call("DELETE", f"{base.rstrip('/')}/deploy/{deployment_id}")
        if response.status_code >= 400 and response.status_code != 404:
            raise DeviceError(f"DELETE {base}/deploy/{deployment_id}: HTTP {response.status_code}")

    async def call(
        self, method: str, url: str, params: dict[str, Any], files: dict[str, bytes] | None = None
    ) -> str:
        """Call a function endpoint (execution files multipart); the result URL it answers."""
        if method.upper() == "GET" and not files and url.startswith("http://"):
            status, raw = await self._get(url, params)
        else:
            sent = {name: (name, data) for name, data in (files or {}).items()}
            response = await self._call(method, url, params=params, files=sent or None)
            status, raw = response.status_code, response.content
        if status >= 400:
            raise FunctionRefused(status, f"{method} {url}: {_said(_parsed(raw))}")
        data = _parsed(raw)
        if not isinstance(data, dict) or not isinstance(data.get("resultUrl"), str):
            raise DeviceError(f"{method} {url}: the answer has no resultUrl")
        return str(data["resultUrl"])

    async def result(self, url: str) -> tuple[int, Any]:
        if url.startswith("http://"):
            status, raw = await self._get(url)
            return status, _parsed(raw)
        response = await self._call("GET", url)
        return response.status_code, _parsed(response.content)


class FunctionRefused(DeviceError):
    """The device answered, and refused the call (bad arguments, unknown function)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _parsed(raw: bytes) -> Any:
    """A body as JSON, else its first 2000 characters."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:2000]


def _said(data: Any) -> str:
    """What an error answer says: its err, error or message field, else its text."""
    if isinstance(data, dict):
        for key in ("err", "error", "message"):
            if key in data:
                return str(data[key])
    return str(data)[:500]
