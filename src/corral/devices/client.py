"""The supervisor-protocol client: what corral asks of a device (description, health,
register, deploy, undeploy, call a function, read a result).

Used by the device and deployment services; every failure becomes `DeviceError` with text
that names the device and the request.
"""

from typing import Any

import httpx

DESCRIPTION_PATH = "/.well-known/wasmiot-device-description"


class DeviceError(Exception):
    """A device did not answer, or answered with an error."""


class SupervisorClient:
    def __init__(self, timeout: float = 5.0) -> None:
        self.http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def close(self) -> None:
        await self.http.aclose()

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
            raise DeviceError(f"{method} {url}: HTTP {response.status_code}: {_text(response)}")
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
        return response.status_code, _body(response)

    async def undeploy(self, base: str, deployment_id: str) -> None:
        response = await self._call("DELETE", f"{base.rstrip('/')}/deploy/{deployment_id}")
        if response.status_code >= 400 and response.status_code != 404:
            raise DeviceError(f"DELETE {base}/deploy/{deployment_id}: HTTP {response.status_code}")

    async def call(
        self, method: str, url: str, params: dict[str, Any], files: dict[str, bytes] | None = None
    ) -> str:
        """Call a function endpoint (execution files multipart); the result URL it answers."""
        sent = {name: (name, data) for name, data in (files or {}).items()}
        response = await self._call(method, url, params=params, files=sent or None)
        if response.status_code >= 400:
            raise FunctionRefused(response.status_code, f"{method} {url}: {_text(response)}")
        data = _body(response)
        if not isinstance(data, dict) or not isinstance(data.get("resultUrl"), str):
            raise DeviceError(f"{method} {url}: the answer has no resultUrl")
        return str(data["resultUrl"])

    async def result(self, url: str) -> tuple[int, Any]:
        response = await self._call("GET", url)
        return response.status_code, _body(response)


class FunctionRefused(DeviceError):
    """The device answered, and refused the call (bad arguments, unknown function)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]


def _text(response: httpx.Response) -> str:
    data = _body(response)
    if isinstance(data, dict):
        for key in ("err", "error", "message"):
            if key in data:
                return str(data[key])
    return str(data)[:500]
