"""The CLI's HTTP client: finds the server and token, turns failures into one-line errors.

URL and token come from --url/--token, then CORRAL_URL/CORRAL_TOKEN, then the file
written by `corral login` (~/.config/corral/cli.yaml, or CORRAL_CLI_CONFIG).
"""

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from corral.config import DEFAULT_PORT

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


def path_part(value: str) -> str:
    """A name or id made safe as one segment of a URL path."""
    return quote(value, safe="")


class CliError(Exception):
    """A failure to print as one line; `code` is the process exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def config_path() -> Path:
    named = os.environ.get("CORRAL_CLI_CONFIG")
    if named:
        return Path(named)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "corral" / "cli.yaml"


def read_config() -> dict[str, str]:
    path = config_path()
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path} should be a mapping with url and token")
    return {str(k): str(v) for k, v in data.items()}


def write_config(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump({"url": url, "token": token}, out)
    return path


@dataclass
class Api:
    url: str
    token: str | None
    timeout: float = 30.0

    @classmethod
    def from_options(cls, url: str | None, token: str | None) -> "Api":
        saved = read_config()
        chosen_url = url or os.environ.get("CORRAL_URL") or saved.get("url") or DEFAULT_URL
        chosen_token = token or os.environ.get("CORRAL_TOKEN") or saved.get("token")
        return cls(chosen_url.rstrip("/"), chosen_token)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            with httpx.Client(base_url=self.url, timeout=self.timeout) as client:
                headers = {**self._headers(), **kwargs.pop("headers", {})}
                response = client.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach corral at {self.url}: {_reason(exc)}") from None
        return self._result(response)

    def download(self, path: str) -> bytes:
        """A response body as bytes (module binaries, data files)."""
        try:
            with httpx.Client(base_url=self.url, timeout=self.timeout) as client:
                response = client.get(path, headers=self._headers())
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach corral at {self.url}: {_reason(exc)}") from None
        if response.status_code >= 400:
            raise CliError(_error_line(response), 2 if response.status_code < 500 else 1)
        return response.content

    def _result(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise CliError(_error_line(response), 2 if response.status_code < 500 else 1)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except json.JSONDecodeError:
            return response.text

    def raw_stream(self, path: str, params: dict[str, Any]) -> Iterator[bytes]:
        """Yield a response body as it arrives (logs)."""
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            with (
                httpx.Client(base_url=self.url, timeout=timeout) as client,
                client.stream("GET", path, params=params, headers=self._headers()) as response,
            ):
                if response.status_code >= 400:
                    response.read()
                    raise CliError(_error_line(response), 2)
                yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach corral at {self.url}: {_reason(exc)}") from None

    def stream(
        self, path: str, params: dict[str, Any], last_id: int | None
    ) -> Iterator[dict[str, Any]]:
        """Yield events from an SSE endpoint until the server closes it."""
        headers = self._headers()
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        timeout = httpx.Timeout(self.timeout, read=60.0)
        try:
            with (
                httpx.Client(base_url=self.url, timeout=timeout) as client,
                client.stream("GET", path, params=params, headers=headers) as response,
            ):
                if response.status_code >= 400:
                    response.read()
                    raise CliError(_error_line(response), 2)
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        yield json.loads(line[6:])
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach corral at {self.url}: {_reason(exc)}") from None


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc)
    if "Connection refused" in text or ("ConnectError" in type(exc).__name__ and not text):
        return "connection refused (is `corral serve` running?)"
    return text or type(exc).__name__


def _error_line(response: httpx.Response) -> str:
    try:
        body = response.json()
        error = body["error"]
        message = str(error["message"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if response.status_code == 401:
        message += " (set CORRAL_TOKEN or run `corral login`)"
    return message
