"""Plain HTTP/1.1 GETs to devices over kept-alive connections, a few idle ones per device:
the hot path of a run (a GET function call, then each result URL) without a general client.

Used by the supervisor-protocol client for GETs without files on http:// URLs. Failures
are OSError, TimeoutError or `BadAnswer`; the client words them.
"""

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

MAX_BODY = 16 * 2**20  # bytes of an answer's body; a device's results are small
KEEP_IDLE = 8  # idle connections kept per device
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class BadAnswer(Exception):
    """The device's answer is not the HTTP/1.x it should be."""


@dataclass
class Answer:
    status: int
    body: bytes


class _Closed(Exception):
    """A kept connection turned out closed before any of the answer came back."""


class KeepAlivePool:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._idle: dict[tuple[str, int], list[Streams]] = {}

    async def get(self, url: str, params: dict[str, Any] | None = None) -> Answer:
        """GET `url` (with `params` added to its query) and read the whole answer."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise BadAnswer(f"not an http:// URL: {url}")
        key = (parts.hostname, parts.port or 80)
        query = "&".join(q for q in (parts.query, urlencode(params or {})) if q)
        target = (parts.path or "/") + (f"?{query}" if query else "")
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: */*\r\n"
            "Accept-Encoding: identity\r\nUser-Agent: corral\r\n\r\n"
        ).encode("latin-1")
        async with asyncio.timeout(self.timeout):
            streams = self._take(key)
            if streams is not None:
                try:
                    return await self._exchange(key, streams, request, reused=True)
                except _Closed:
                    pass  # the device closed it while it was idle: nothing was run
            streams = await asyncio.open_connection(*key)
            return await self._exchange(key, streams, request, reused=False)

    def _take(self, key: tuple[str, int]) -> Streams | None:
        idle = self._idle.get(key, [])
        while idle:
            reader, writer = idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def _exchange(
        self, key: tuple[str, int], streams: Streams, request: bytes, *, reused: bool
    ) -> Answer:
        reader, writer = streams
        keep = False
        try:
            try:
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
                nothing = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
                if reused and nothing:
                    raise _Closed from None
                raise ConnectionResetError("the device closed the connection") from None
            except asyncio.LimitOverrunError:
                raise BadAnswer("the answer's head is too long") from None
            try:
                answer, keep = await _read_rest(reader, head)
            except asyncio.IncompleteReadError:
                raise BadAnswer("the answer ended early") from None
            except asyncio.LimitOverrunError:
                raise BadAnswer("a line of the answer is too long") from None
            return answer
        finally:
            idle = self._idle.setdefault(key, [])
            if keep and len(idle) < KEEP_IDLE:
                idle.append(streams)
            else:
                writer.close()

    async def close(self) -> None:
        for idle in self._idle.values():
            for _reader, writer in idle:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        self._idle.clear()


async def _read_rest(reader: asyncio.StreamReader, head: bytes) -> tuple[Answer, bool]:
    """The answer whose head was read, and whether its connection may be used again."""
    version, status, headers = _parse_head(head)
    while 100 <= status < 200:  # an interim answer; the real one follows
        version, status, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
    keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if status in (204, 304):
        return Answer(status, b""), keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Answer(status, await _chunked(reader)), keep
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > MAX_BODY:
            raise BadAnswer(f"the answer's content-length {length[:20]!r} is not usable")
        return Answer(status, await reader.readexactly(int(length))), keep
    body = b""  # the body ends when the device closes the connection
    while chunk := await reader.read(65536):
        body += chunk
        if len(body) > MAX_BODY:
            raise BadAnswer(f"the answer is longer than {MAX_BODY} bytes")
    return Answer(status, body), False


def _parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise BadAnswer(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return version, int(code), headers


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise BadAnswer(f"bad chunk size {line[:40]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return body
        if len(body) + size > MAX_BODY:
            raise BadAnswer(f"the answer is longer than {MAX_BODY} bytes")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
