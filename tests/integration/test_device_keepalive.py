"""The kept-alive GETs of a run against small HTTP servers on loopback that answer as
devices' servers do: length-delimited, chunked, HTTP/1.0 closing after each answer, and
closing a kept connection while it is idle (the call must then run once, not twice).
"""

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from corral.devices.keepalive import BadAnswer, KeepAlivePool

Answer = Callable[[int], bytes]  # the raw answer to the n-th request (from 1)


class Server:
    """A loopback HTTP server that counts connections and requests and answers raw bytes;
    `close_after` closes a connection after that many answers on it."""

    def __init__(self, answer: Answer, close_after: int = 0) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests = 0
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> "Server":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"GET /"), head
                assert b"\r\nHost: 127.0.0.1:" in head, head
                self.requests += 1
                writer.write(self.answer(self.requests))
                await writer.drain()
                answered += 1
                if self.close_after and answered >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def url(self, path: str = "/r") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _json(n: int) -> bytes:
    body = b'{"n": %d}' % n
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await test()
        await asyncio.sleep(0.05)  # closed transports finish closing before the loop ends

    asyncio.run(main())


def test_one_connection_serves_every_call_and_params_reach_the_query() -> None:
    async def test() -> None:
        async with Server(_json) as server:
            pool = KeepAlivePool(5.0)
            for n in range(1, 4):
                answer = await pool.get(server.url("/d/modules/m/f?a=1"), {"x": n})
                assert (answer.status, answer.body) == (200, b'{"n": %d}' % n)
            assert server.connections == 1
            await pool.close()

    run(test)


def test_chunked_and_closing_http10_answers_are_read_whole() -> None:
    def chunked(_: int) -> bytes:
        return b"HTTP/1.1 500 INTERNAL SERVER ERROR\r\nTransfer-Encoding: chunked\r\n\r\n" + (
            b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )

    def old(_: int) -> bytes:
        return b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"a" * 100_000

    async def test() -> None:
        async with Server(chunked) as first, Server(old, close_after=1) as second:
            pool = KeepAlivePool(5.0)
            for _ in range(2):
                answer = await pool.get(first.url())
                assert (answer.status, answer.body) == (500, b"hello world")
                answer = await pool.get(second.url())
                assert (answer.status, answer.body) == (200, b"a" * 100_000)
            assert first.connections == 1
            assert second.connections == 2  # HTTP/1.0 closes: a new connection each time
            await pool.close()

    run(test)


def test_a_connection_the_device_closed_while_idle_is_replaced_and_the_call_runs_once() -> None:
    async def test() -> None:
        async with Server(_json, close_after=1) as server:
            pool = KeepAlivePool(5.0)
            assert (await pool.get(server.url())).body == b'{"n": 1}'
            await asyncio.sleep(0.2)  # the server has closed the kept connection by now
            assert (await pool.get(server.url())).body == b'{"n": 2}'
            assert server.requests == 2, "the second call reached the device once"
            assert server.connections == 2
            await pool.close()

    run(test)


def test_no_answer_in_time_refused_connections_and_garbage_fail_clearly() -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(1000)

    async def test() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = KeepAlivePool(0.3)
        with pytest.raises(TimeoutError):
            await pool.get(f"http://127.0.0.1:{port}/r")
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await pool.get(f"http://127.0.0.1:{port}/r")
        async with Server(lambda _: b"SSH-2.0-OpenSSH\r\n\r\n") as garbage:
            with pytest.raises(BadAnswer, match=r"not an HTTP/1\.x answer"):
                await pool.get(garbage.url())
        async with Server(lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") as short:
            short.close_after = 1
            with pytest.raises(BadAnswer, match="ended early"):
                await pool.get(short.url())
        await pool.close()

    run(test)
