"""The composition root: builds the store, bus, metrics and services of one process.

`corral serve` and `create_app` own one Core; its `start` and `stop` bracket the background
loops (host monitor, event pruning).
"""

import asyncio
import contextlib
import os
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import structlog

from corral.config import Settings
from corral.control.access import AccessService
from corral.control.hosts import HostService
from corral.control.images import ImageSupply
from corral.control.sessions import SessionService
from corral.control.stacks import StackService
from corral.errors import NotFound
from corral.events import EventBus
from corral.metrics import Metrics
from corral.model.hostsfile import parse_hosts_file
from corral.store.database import Database
from corral.store.events import EventStore
from corral.store.hosts import HostStore
from corral.store.sessions import SessionStore, TemplateStore
from corral.store.stacks import StackStore
from corral.store.tables import utcnow
from corral.store.tokens import TokenStore

log = structlog.get_logger("corral.core")


class Core:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.effective_database_url)
        self.metrics = Metrics()
        self.events = EventStore(self.db)
        self.bus = EventBus(self.events, self.metrics)
        self.hosts = HostService(HostStore(self.db), self.bus, self.metrics, settings)
        self.access = AccessService(TokenStore(self.db), self.bus)
        self.images = ImageSupply(self.hosts, self.bus)
        self.stacks = StackService(StackStore(self.db), self.hosts, self.bus, settings, self.images)
        self.sessions = SessionService(
            TemplateStore(self.db),
            SessionStore(self.db),
            self.hosts,
            self.bus,
            settings,
            self.images,
        )
        self.stacks.on_session_event = self.sessions.poke
        self.stopping = asyncio.Event()
        self.first_admin_token: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, background: bool = True) -> None:
        """Migrate, bootstrap the admin token, register hosts, start the loops."""
        self.settings.home.mkdir(parents=True, exist_ok=True)
        await self.db.migrate()
        self.first_admin_token = await self.access.bootstrap(self.settings.bootstrap_token)
        if self.settings.hosts_file is not None:
            text = self.settings.hosts_file.read_text()
            specs = parse_hosts_file(text, str(self.settings.hosts_file))
            outcomes = await self.hosts.apply(specs, prune=False)
            log.info("hosts file applied", file=str(self.settings.hosts_file), outcomes=outcomes)
        with contextlib.suppress(NotFound):
            await self.hosts.register_local(self.settings.local_docker_url)
        if self.settings.templates_dir is not None:
            added = await self.sessions.load_folder(self.settings.templates_dir)
            log.info("templates added", folder=str(self.settings.templates_dir), names=added)
        await self.sessions.recover()
        await self.bus.emit("corral.started", "corral", "corral started", {"pid": os.getpid()})
        if background:
            self._spawn(self.hosts.run_monitor(self.stopping))
            self._spawn(self._prune_events())
            self._spawn(self.stacks.run_resync(self.stopping))
            self._spawn(self.stacks.run_watchers(self.stopping))
            self._spawn(self.sessions.run_monitor(self.stopping))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(_logged(work)))

    async def _prune_events(self) -> None:
        keep = timedelta(days=self.settings.event_retention_days)
        while not self.stopping.is_set():
            removed = await self.events.prune(utcnow() - keep)
            if removed:
                log.info("old events pruned", count=removed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=3600)

    async def stop(self) -> None:
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.sessions.shutdown()
        self.hosts.close()
        await self.db.close()


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    """Run a background loop; a crash is logged with its traceback, never silent."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background loop crashed", loop=repr(work))
