"""The host service: register engines, check them on a period and on demand.

Called by the API's host routes and by the serve loop; talks to engines only through
a HostDriver, from a thread pool of its own, so a hung engine never blocks the API.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog

from corral.config import Settings
from corral.errors import Conflict, CorralError, Forbidden, Invalid, NotFound, Unreachable
from corral.events import EventBus
from corral.hosts.docker_engine import DockerEngine
from corral.hosts.driver import HostDriver
from corral.hosts.tls_reasons import certificate_dates
from corral.metrics import Metrics
from corral.model.hosts import (
    MAX_LABELS,
    EngineFacts,
    HostSpec,
    Probe,
    engine_url_allowed,
    insecurity,
)
from corral.model.names import check_labels
from corral.model.views import HostView
from corral.store.hosts import HostStore, spec_of

log = structlog.get_logger("corral.hosts")
DriverFactory = Callable[[HostSpec, float], HostDriver]
T = TypeVar("T")
LOCAL = "local"  # the name the local engine is registered under at start
EXPIRY_WARNING = timedelta(days=14)  # warn this long before a client certificate expires


def _same_engine(name: str, other: str, how: str) -> Conflict:
    return Conflict(
        f"host {name} would reach the same Docker engine as host {other} ({how}): one engine "
        f"is one host. Give {other} the labels you want instead "
        f"(`corral host label {other} key=value`), or remove {other} first "
        f"(`corral host rm {other}`)",
        {"host": name, "same_engine_as": other},
    )


def _identity(facts: EngineFacts | None) -> str:
    return facts.identity if facts else ""


def _twin_refused(view: HostView, probe: Probe, hosts: list[HostView]) -> Probe:
    """A host found on the engine of an older host (added while one did not answer, or
    stored before corral told engines apart) is kept unreachable, so that two hosts never
    manage the same containers."""
    engine = _identity(probe.facts)
    if not engine:
        return probe
    for other in hosts:
        if other.name == view.name or not other.facts or other.facts.identity != engine:
            continue
        if (other.created_at, other.name) < (view.created_at, view.name):
            return Probe(
                False,
                probe.checked_at,
                error=f"same Docker engine as host {other.name} (engine ID {engine[:14]}): "
                f"remove one of them (`corral host rm {view.name}`)",
            )
    return probe


class HostService:
    def __init__(
        self,
        store: HostStore,
        bus: EventBus,
        metrics: Metrics,
        settings: Settings,
        driver_factory: DriverFactory = DockerEngine,
    ) -> None:
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.settings = settings
        self.driver_factory = driver_factory
        self._drivers: dict[str, tuple[HostSpec, HostDriver]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="corral-host")
        self._expiry_warned: set[tuple[str, str, datetime]] = set()
        # Set when a check finds the host unreachable: work still waiting on it gives up.
        self._lost: dict[str, asyncio.Event] = {}
        # every host by name, or one: its spec and its last observation
        self.views, self.view = store.list, store.get

    def refusal(self, spec: HostSpec) -> str:
        """Why corral will not talk to this engine as configured ("" when it will): an
        address outside `engine_networks`, or an insecure connection not accepted."""
        if not engine_url_allowed(spec.url, self.settings.engine_networks):
            allowed = ", ".join(self.settings.engine_networks)
            return (
                f"engine URL {spec.url} points outside the allowed engine networks ({allowed}); "
                "widen engine_networks to use it"
            )
        risk = insecurity(spec)
        if risk and not spec.insecure:
            return (
                f"{risk}: reach it over ssh:// or tcp:// with TLS (docs/security.md), or accept "
                f"the risk with `corral host add {spec.name} {spec.url} --insecure` "
                "(hosts file and API: insecure: true)"
            )
        return ""

    def check_allowed(self, spec: HostSpec) -> None:
        """Refuse a host corral will not reach: outside `engine_networks` is this server's
        policy (403, as a role's limit); an insecure link not consented to is bad input."""
        reason = self.refusal(spec)
        if reason:
            outside = not engine_url_allowed(spec.url, self.settings.engine_networks)
            error = Forbidden if outside else Invalid
            raise error(reason, {"field": "url", "host": spec.name})

    async def warn_insecure(self) -> None:
        """A warning event, at each start, for every host reached insecurely by consent."""
        for view in await self.store.list():
            risk = insecurity(spec_of(view))
            if risk and view.insecure:
                log.warning("insecure engine connection accepted", host=view.name, risk=risk)
                await self.bus.emit(
                    "host.insecure",
                    f"host/{view.name}",
                    f"host {view.name}: {risk}; accepted with insecure",
                    {"url": view.url, "level": "warning"},
                )

    async def add(self, spec: HostSpec) -> HostView:
        self.check_allowed(spec)
        probes = await self._check_engines([spec], prune=False)
        view = await self.store.add(spec)
        await self.bus.emit(
            "host.added", f"host/{spec.name}", f"host {spec.name} added", {"url": spec.url}
        )
        return await self._check_or(view, spec, probes.get(spec.name))

    async def put(self, spec: HostSpec) -> tuple[HostView, str]:
        self.check_allowed(spec)
        probes = await self._check_engines([spec], prune=False)
        return await self._put(spec, probes.get(spec.name))

    async def _put(self, spec: HostSpec, probe: Probe | None = None) -> tuple[HostView, str]:
        """Store the host; `probe`: the look at its engine just made, if any."""
        view, outcome = await self.store.put(spec)
        if outcome == "unchanged":
            return view, outcome
        kind = "added" if outcome == "created" else outcome
        await self.bus.emit(
            f"host.{kind}", f"host/{spec.name}", f"host {spec.name} {kind}", {"url": spec.url}
        )
        return await self._check_or(view, spec, probe), outcome

    async def remove(self, name: str) -> None:
        await self.store.remove(name, remember=name == LOCAL)
        self._drop_driver(name)
        self._lost.pop(name, None)
        self.metrics.forget_host(name)
        message = f"host {name} removed"
        if name == LOCAL:
            message += (
                " (not registered again at start; `corral host add local URL` brings it back)"
            )
        await self.bus.emit("host.removed", f"host/{name}", message)

    async def set_labels(self, name: str, changes: dict[str, str | None]) -> HostView:
        """Change an existing host's labels: a value sets a label, None removes it."""
        try:
            check_labels({k: v for k, v in changes.items() if v is not None})
        except ValueError as exc:
            raise Invalid(str(exc), {"field": "labels"}) from None
        view, changed = await self.store.set_labels(name, changes, MAX_LABELS)
        if changed:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(view.labels.items())) or "none"
            await self.bus.emit(
                "host.updated", f"host/{name}", f"host {name} labels now {shown}", {"url": view.url}
            )
        return view

    async def _check_engines(self, specs: list[HostSpec], prune: bool) -> dict[str, Probe]:
        """One engine is one host: refuse (Conflict) specs whose engine answers with the
        engine ID of another host. Returns the probes made (of new or re-pointed hosts)."""
        stored = {view.name: view for view in await self.store.list()}
        changed = [s for s in specs if s.name not in stored or stored[s.name].url != s.url]
        found = await asyncio.gather(*(self._probe(s) for s in changed))
        probes = {spec.name: probe for spec, probe in zip(changed, found, strict=True)}
        # host name -> engine identity ("": unknown), as the hosts will be afterwards
        kept = [stored[s.name] for s in specs if s.name in stored] if prune else stored.values()
        engines = {view.name: _identity(view.facts) for view in kept}
        engines.update({name: _identity(probe.facts) for name, probe in probes.items()})
        for spec in changed:
            engine = engines[spec.name]
            twin = sorted(
                n for n, e in engines.items() if n != spec.name and engine and e == engine
            )
            if twin:
                for name in probes:
                    if name not in stored:
                        self._drop_driver(name)
                raise _same_engine(spec.name, twin[0], f"engine ID {engine[:14]}")
        return probes

    async def apply(self, specs: list[HostSpec], prune: bool) -> dict[str, str]:
        """Make the stored hosts match a hosts file; returns each host's outcome."""
        for spec in specs:
            self.check_allowed(spec)
        probes = await self._check_engines(specs, prune)
        outcomes: dict[str, str] = {}
        for spec in specs:
            _, outcomes[spec.name] = await self._put(spec, probes.get(spec.name))
        if prune:
            wanted = {spec.name for spec in specs}
            for view in await self.store.list():
                if view.name not in wanted:
                    await self.remove(view.name)
                    outcomes[view.name] = "removed"
        return outcomes

    async def register_local(self, url: str) -> HostView | None:
        """Register the engine at `url` as host `local` when it answers, no host is called
        `local` or already reaches that engine, and the user did not remove `local`."""
        if not url:
            return None
        try:
            return await self.store.get(LOCAL)
        except NotFound:
            pass
        if await self.store.buried(LOCAL):
            log.info("host local was removed by the user; not registering it again", url=url)
            return None
        spec = HostSpec(name=LOCAL, url=url, labels={})
        try:
            probe = (await self._check_engines([spec], prune=False))[LOCAL]
        except Conflict as exc:
            log.info(
                "the local engine is already a host; not registering host local",
                url=url,
                host=exc.detail.get("same_engine_as"),
            )
            return None
        if not probe.reachable:
            log.info(
                "no local engine answers; not registering host local", url=url, error=probe.error
            )
            self._drop_driver(LOCAL)
            return None
        view, _ = await self._put(spec, probe)
        return view

    async def _check_or(self, view: HostView, spec: HostSpec, probe: Probe | None) -> HostView:
        try:
            return await self.check(view.name, (spec, probe) if probe is not None else None)
        except NotFound:
            return view

    async def check(
        self,
        name: str,
        probed: tuple[HostSpec, Probe] | None = None,
        hosts: list[HostView] | None = None,
    ) -> HostView:
        """Check one host now (waiting for a check already under way) and store the result.
        `probed`: a look at the engine just made at registration, taken instead of another
        when the host is still as it was looked at; `hosts`: all hosts, when already read."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            view = await self.store.get(name)
            spec = spec_of(view)
            refused = self.refusal(spec)
            if refused:  # registered before the rule, or the rule changed: not contacted
                self._drop_driver(name)
                probe = Probe(False, datetime.now(UTC), error=f"refused: {refused}")
            else:
                if probed is None or probed[0] != spec:
                    probed = spec, await self._probe(spec)
                others = hosts if hosts is not None else await self.store.list()
                probe = _twin_refused(view, probed[1], others)
            view, changed = await self.store.record_probe(name, spec.url, probe)
        lost = self._lost.get(name)
        if not probe.reachable:
            self._lost.setdefault(name, asyncio.Event()).set()
        elif lost is not None and lost.is_set():
            del self._lost[name]  # those who waited on it were told; new work waits anew
        self.metrics.host_reachable.labels(name).set(1 if probe.reachable else 0)
        if changed:
            await self._announce(view, probe)
        await self._warn_expiry(view)
        return view

    async def _warn_expiry(self, view: HostView) -> None:
        """An event (once per process and certificate) when corral's client certificate
        for this host expires within EXPIRY_WARNING."""
        if view.tls is None:
            return
        dates = certificate_dates(view.tls.cert)
        if dates is None:
            return
        end = dates[1]
        left = end - datetime.now(UTC)
        key = (view.name, view.tls.cert, end)
        if left > EXPIRY_WARNING or key in self._expiry_warned:
            return
        self._expiry_warned.add(key)
        when = end.strftime("%Y-%m-%d %H:%M UTC")
        state = "expired" if left.total_seconds() <= 0 else f"expires in {left.days} days"
        await self.bus.emit(
            "host.certificate_expiring",
            f"host/{view.name}",
            f"corral's client certificate for host {view.name} ({view.tls.cert}) {state}, "
            f"on {when}: issue a new one from the engine's CA",
            {"cert": view.tls.cert, "not_after": end.isoformat(), "level": "warning"},
        )

    async def check_all(self) -> None:
        views = await self.store.list()
        busy = {name for name, lock in self._locks.items() if lock.locked()}
        names = [v.name for v in views if v.name not in busy]
        results = await asyncio.gather(
            *(self.check(n, hosts=views) for n in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, NotFound):
                continue
            if isinstance(result, BaseException):
                log.error("host check failed", host=name, error=repr(result))

    async def run_monitor(self, stop: asyncio.Event) -> None:
        """Check every host each `host_refresh_seconds` until `stop` is set."""
        interval = self.settings.host_refresh_seconds
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.check_all()
            except Exception as exc:
                log.error("host monitor round failed", error=repr(exc))
            delay = max(0.05, interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _probe(self, spec: HostSpec) -> Probe:
        driver = self._driver(spec)
        started = time.monotonic()
        timeout = self.settings.host_timeout_seconds
        try:
            facts = await asyncio.wait_for(self.call(driver.probe), timeout + 1)
            probe = Probe(reachable=True, checked_at=datetime.now(UTC), facts=facts)
        except TimeoutError:
            self._drop_driver(spec.name)
            probe = Probe(False, datetime.now(UTC), error=f"no answer within {timeout:g} s")
        except CorralError as exc:
            probe = Probe(False, datetime.now(UTC), error=exc.message)
        self.metrics.host_check_seconds.labels(spec.name).observe(time.monotonic() - started)
        return probe

    async def driver(self, name: str) -> HostDriver:
        """The driver for a stored host (NotFound if there is none)."""
        return self.driver_for(await self.store.get(name))

    async def drivers_up(self) -> dict[str, HostDriver]:
        """The drivers of the hosts the monitor last found reachable, by host name."""
        return {h.name: self.driver_for(h) for h in await self.views() if h.reachable}

    def driver_for(self, host: HostView) -> HostDriver:
        """The driver for a host already read from the store (no second read)."""
        return self._driver(spec_of(host))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking driver call in the hosts' thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def while_reachable(self, name: str, work: Awaitable[T]) -> T:
        """Await `work` on host `name`, or raise Unreachable as soon as a check finds the
        host unreachable: a call in flight when an engine is cut off (link down, a frozen
        dockerd) would otherwise wait for its socket timeout, minutes."""
        lost = self._lost.setdefault(name, asyncio.Event())
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if task.done():
            return task.result()
        task.cancel()  # the thread's call ends at its timeout; nothing waits for it
        with contextlib.suppress(NotFound):
            view = await self.store.get(name)
            raise Unreachable(
                f"host {name} stopped answering: {view.last_error or 'unreachable'}",
                {"host": name},
            )
        raise Unreachable(f"host {name} stopped answering", {"host": name})

    async def container_logs(
        self, host: str, container_id: str, tail: int, follow: bool, since: float | None = None
    ) -> AsyncIterator[bytes]:
        """A container's output as it comes, read in the hosts' thread pool."""
        driver = await self.driver(host)
        chunks = await self.call(driver.logs, container_id, tail, follow, since)
        try:
            while True:
                chunk = await self.call(next, chunks, None)
                if not isinstance(chunk, bytes):
                    return
                yield chunk
        finally:  # the reader left (a follow of a quiet container): free its thread now
            chunks.close()

    def _driver(self, spec: HostSpec) -> HostDriver:
        known = self._drivers.get(spec.name)
        if known is not None and known[0] == spec:
            return known[1]
        self._drop_driver(spec.name)
        driver = self.driver_factory(spec, self.settings.host_timeout_seconds)
        self._drivers[spec.name] = (spec, driver)
        return driver

    def _drop_driver(self, name: str) -> None:
        known = self._drivers.pop(name, None)
        if known is not None:
            self._pool.submit(known[1].close)

    async def _announce(self, view: HostView, probe: Probe) -> None:
        resource = f"host/{view.name}"
        if probe.reachable and probe.facts is not None:
            f = probe.facts
            await self.bus.emit(
                "host.reachable",
                resource,
                f"host {view.name} is reachable (Docker {f.engine_version}, {f.cpus} CPUs, "
                f"{f.containers_running}/{f.containers_total} containers running)",
                {"url": view.url},
            )
        else:
            await self.bus.emit(
                "host.unreachable",
                resource,
                f"host {view.name} is unreachable: {probe.error}",
                {"url": view.url, "error": probe.error},
            )

    def close(self) -> None:
        drivers = [driver for _, driver in self._drivers.values()]
        self._drivers.clear()
        for driver in drivers:  # now, not in the pool: it is being shut down
            driver.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
