"""Serving machinery shared by `corral serve` and `corral agent`: listening sockets (address
reuse, TCP_NODELAY through IPPROTO_TCP, one error line) and a uvicorn server that ends
normally on SIGTERM/SIGINT. Imported only when one of them runs (uvicorn is not light).
"""

import asyncio
import contextlib
import copy
import gc
import itertools
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from corral import logs
from corral.exits import CliError

YOUNG_OBJECTS = 10_000  # new objects between two young passes of the garbage collector
SETTLE_SECONDS = 30.0  # a full pass over what came since the last one, then freeze it
RESETTLE_TURNS = 120  # every hour a full pass over everything (a frozen cycle's memory back)


class GracefulServer(uvicorn.Server):
    """uvicorn whose SIGTERM/SIGINT end `serve()` normally (exit 0 after the app's own
    shutdown ran) instead of re-raising the signal."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def listen(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every response body waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {bind}:{port}: {exc.strerror}", 1) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def settle_heap() -> None:
    """Once started, before serving, tune the cyclic garbage collector for a long-running
    server. What is alive now (modules, classes, the app: two thirds of a loaded replica's
    objects) leaves the collector's view, so its full passes stop scanning it; and a young
    pass waits for 10,000 new objects (not 700), so the short-lived ones of each message
    die before they are promoted and full passes come a few times a minute, not every few
    seconds. A full pass stops the event loop: 100-200 ms each, every 10 s, on replicas
    holding 500 robots each (bench/fleet.py) before; with this, about one a minute."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, 10, 10)


async def keep_heap_settled(stopping: asyncio.Event) -> None:
    """What stays alive while serving (a thousand robots' links, sessions and rows: full
    passes of 50-130 ms at 1,000 robots, measured) leaves the collector's view too: every
    `SETTLE_SECONDS` a `settle` turn, until `stopping`."""
    for turn in itertools.count(1):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), SETTLE_SECONDS)
        if stopping.is_set():
            return
        settle(turn)


def settle(turn: int) -> None:
    """A full pass over what came since the last turn (a few ms), then what survived it is
    frozen. Frozen objects that later die in a cycle (a robot's session that ended) wait
    for every `RESETTLE_TURNS`th turn, which unfreezes everything first (one pass over the
    whole heap an hour): that much memory at most is held back."""
    if turn % RESETTLE_TURNS == 0:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


def configure_logging(level: str) -> None:
    """Log lines as plain messages at `level` (an unknown level is a CLI error), without
    secrets or tracebacks' local variables (corral.logs)."""
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise CliError(f"bad log level {level!r}", 2)
    logging.basicConfig(level=number, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logs.install_filter("")
    logs.configure(number)


def uvicorn_logging() -> dict[str, Any]:
    """uvicorn's own logging setup, with corral's redaction on each of its handlers (its
    access log and its error log, which names each WebSocket's path and query)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": logs.RedactFilter}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact"]
    return config
