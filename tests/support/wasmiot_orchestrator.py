"""corral as a Wasm-IoT orchestrator for tests: Core and `create_server_app` in a thread,
on its API port and an anonymous Wasm-IoT port (both on loopback), as `corral serve`
runs them, with `public_url` naming the Wasm-IoT port by host name as a device reaches it.
"""

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from tests.support.processes import free_port
from tests.support.server import ADMIN, wait_healthy

from corral.api.app import create_server_app
from corral.config import Settings
from corral.core import Core
from corral.serving import listen


class Orchestrator:
    """`url`: corral's API (token); `seed`: the Wasm-IoT port (no token)."""

    def __init__(self, home: Path, anonymous: bool = True, **extra: Any) -> None:
        self.port, self.wasmiot_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seed = f"http://127.0.0.1:{self.wasmiot_port}"
        self.settings = Settings(
            home=home,
            bootstrap_token=ADMIN,
            local_docker_url="",
            bind="127.0.0.1",
            port=self.port,
            wasmiot_port=self.wasmiot_port,
            wasmiot_anonymous=anonymous,
            # devices reach corral by name here: X-Forwarded-For must say `localhost`
            public_url=f"http://localhost:{self.wasmiot_port}",
            device_health_seconds=0.5,
            **extra,
        )
        self.server: uvicorn.Server | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.failure: BaseException | None = None
        self.core: Core | None = None  # set while it serves

    async def _serve(self) -> None:
        ports = (self.port, self.wasmiot_port, self.settings.edgeecho_port)
        sockets = [listen("127.0.0.1", p) for p in ports if p is not None]
        core = self.core = Core(self.settings)
        try:
            await core.start()
            config = uvicorn.Config(
                create_server_app(core),
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=1,
            )
            self.server = uvicorn.Server(config)
            await self.server.serve(sockets=sockets)
        except BaseException as exc:
            self.failure = exc
            raise
        finally:
            await core.stop()
            for sock in sockets:
                sock.close()

    def __enter__(self) -> "Orchestrator":
        self.thread.start()
        try:
            wait_healthy(self.url)
        except RuntimeError:
            raise RuntimeError(f"corral did not start: {self.failure!r}") from None
        return self

    def __exit__(self, *_: Any) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(timeout=60)
        if self.thread.is_alive():
            raise RuntimeError(f"corral at {self.url} did not stop within 60 s")

    def seed_client(self) -> httpx.Client:
        """The Wasm-IoT port as the orchestrator's own clients use it: no token."""
        return httpx.Client(base_url=self.seed, timeout=60)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60
        )
