"""The CLI's HTTP client: finds the server and token, turns failures into one-line errors.

URL and token come from --url/--token, then CORRAL_URL/CORRAL_TOKEN, then the file
written by `corral login` (~/.config/corral/cli.yaml, or CORRAL_CLI_CONFIG). Requests go
through the standard library's http.client: a command pays no HTTP library's start-up.
"""

import http.client
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from corral import DEFAULT_PORT
from corral.exits import CliError

RETRY_SECONDS = 1.0  # before a followed stream is opened again

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


def path_part(value: str) -> str:
    """A name or id made safe as one segment of a URL path."""
    return quote(value, safe="")


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
    import yaml  # only when there is a file: most commands are given a URL and token

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path} should be a mapping with url and token")
    return {str(k): str(v) for k, v in data.items()}


def write_config(url: str, token: str) -> Path:
    import yaml

    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file made earlier with a looser mode holds the token too
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump({"url": url, "token": token}, out)
    return path


@dataclass
class Reply:
    """A whole answer: its status and body."""

    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


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

    def _open(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: dict[str, Any] | None = None,
        files: dict[str, Any] | None = None,
        content: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request on a new connection; the connection and its answer's head."""
        sent = {**self._headers(), **(headers or {})}
        body: bytes | None = None
        if files:
            body, sent["Content-Type"] = _multipart(data or {}, files)
        elif data is not None:
            body = urlencode(data).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        elif json is not None:
            body = _json_dumps(json)
            sent["Content-Type"] = "application/json"
        elif content is not None:
            body = content.encode() if isinstance(content, str) else content
        target = urlsplit(self.url)
        kind = (
            http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
        )
        prefix = target.path.rstrip("/")
        query = f"?{_query(params)}" if params else ""
        connection = kind(target.netloc, timeout=self.timeout)
        try:
            connection.request(method, f"{prefix}{path}{query}", body=body, headers=sent)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self._unreachable(exc) from None
        return connection, response

    def _unreachable(self, exc: Exception) -> CliError:
        return CliError(f"cannot reach corral at {self.url}: {_reason(exc)}")

    def _reply(self, method: str, path: str, **kwargs: Any) -> Reply:
        return self._whole(*self._open(method, path, **kwargs))

    def _whole(
        self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse
    ) -> Reply:
        """Read the rest of an answer and close its connection."""
        try:
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            connection.close()
        return Reply(response.status, body)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request (params, json, data, files or content, as keywords) and return
        the answer's JSON (its text when it is not JSON, None when it is empty)."""
        return self._result(self._reply(method, path, **kwargs))

    def download(self, path: str) -> bytes:
        """A response body as bytes (module binaries, data files)."""
        return _checked(self._reply("GET", path)).body

    def _result(self, reply: Reply) -> Any:
        _checked(reply)
        if reply.status == 204 or not reply.body:
            return None
        try:
            return reply.json()
        except ValueError:
            return reply.text

    @contextmanager
    def _streamed(
        self, path: str, params: dict[str, Any], headers: dict[str, str], read_timeout: float | None
    ) -> Iterator[http.client.HTTPResponse]:
        """A streamed answer, checked, to read while in the block; its reads wait
        `read_timeout` (None: for ever). Its connection closes when the block ends."""
        connection, response = self._open("GET", path, params=params, headers=headers)
        if response.status >= 400:  # 5xx (no leader for a moment): worth asking again
            reply = self._whole(connection, response)
            raise CliError(_error_line(reply), 2 if response.status < 500 else 1)
        if connection.sock is not None:
            connection.sock.settimeout(read_timeout)
        try:
            yield response
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            connection.close()

    def raw_stream(self, path: str, params: dict[str, Any]) -> Iterator[bytes]:
        """Yield a response body as it arrives (logs)."""
        with self._streamed(path, params, {}, None) as response:
            while chunk := response.read1(65536):
                yield chunk

    def follow(
        self,
        path: str,
        params: dict[str, Any],
        handle: Callable[[Any], None],
        last_id: Callable[[], int | None] = lambda: None,
    ) -> None:
        """Give each frame's data of an SSE endpoint to `handle` until interrupted, opening
        it again (after `last_id()`) whenever it ends or the server answers 5xx (no leader
        for a moment); a 4xx ends it with its CliError."""
        try:
            while True:
                try:
                    for data in self.stream(path, params, last_id()):
                        handle(data)
                except CliError as exc:
                    if exc.code == 2:
                        raise
                    print(f"{exc.message}; retrying", file=sys.stderr, flush=True)
                time.sleep(RETRY_SECONDS)
        except KeyboardInterrupt:
            return

    def stream(self, path: str, params: dict[str, Any], last_id: int | None) -> Iterator[Any]:
        """Yield each frame's data from an SSE endpoint until the server closes it."""
        headers = {} if last_id is None else {"Last-Event-ID": str(last_id)}
        with self._streamed(path, params, headers, 60.0) as response:
            while line := response.readline():
                if line.startswith(b"data: "):
                    yield json.loads(line[6:])


def _checked(reply: Reply) -> Reply:
    """The reply, unless it is an error: then a CliError (exit 2 for 4xx, 1 for 5xx)."""
    if reply.status >= 400:
        raise CliError(_error_line(reply), 2 if reply.status < 500 else 1)
    return reply


def _query(params: dict[str, Any]) -> str:
    """Query parameters as httpx writes them: booleans as true/false, None as empty."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, bool):
                item = "true" if item else "false"
            pairs.append((key, "" if item is None else str(item)))
    return urlencode(pairs)


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _multipart(fields: dict[str, Any], files: dict[str, Any]) -> tuple[bytes, str]:
    """A multipart/form-data body: text fields, then files given as (filename, bytes or a
    readable file, content type) or (None, text) for a plain field."""
    boundary = secrets.token_hex(16)
    parts: list[bytes] = []

    def part(name: str, value: bytes, filename: str | None, kind: str | None) -> None:
        disposition = f'form-data; name="{_quoted(name)}"'
        if filename is not None:
            disposition += f'; filename="{_quoted(filename)}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if kind is not None:
            head += f"Content-Type: {kind}\r\n"
        parts.append(head.encode() + b"\r\n" + value + b"\r\n")

    for name, value in fields.items():
        part(name, str(value).encode(), None, None)
    for name, spec in files.items():
        filename, value = spec[0], spec[1]
        kind = spec[2] if len(spec) > 2 else None
        if hasattr(value, "read"):
            value = value.read()
        if isinstance(value, str):
            value = value.encode()
        if filename is not None and kind is None:
            kind = "application/octet-stream"
        part(name, value, filename, kind)
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _reason(exc: Exception) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is `corral serve` running?)"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc)
    return text or type(exc).__name__


def _error_line(reply: Reply) -> str:
    try:
        body = reply.json()
        error = body["error"]
        message = str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {reply.status}: {reply.text[:200]}"
    if reply.status == 401:
        message += " (set CORRAL_TOKEN or run `corral login`)"
    return message
