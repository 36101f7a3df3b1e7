"""Sessions: templates instantiated on request as private, disposable container pipelines.

Called by the template and session routes, the edgeECHO adapter and the CLI. A session is
placed on one host with room, gets its own network, starts its containers in dependency
order (each only once what it depends on is ready), is watched until it completes, fails
or expires, and is then removed by the in-process reaper, its history kept in the store.
"""

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import structlog

from corral.config import Settings
from corral.control.engine_events import CONTAINER
from corral.control.hosts import HostService
from corral.control.images import ImageSupply
from corral.control.readiness import until_decided
from corral.control.stacks import base_folder, read_utf8
from corral.errors import CorralError, Invalid, NoRoom, NotFound, Unreachable
from corral.events import EventBus
from corral.hosts.driver import HostDriver, ImageMissing, SubnetTaken
from corral.model.containers import (
    CREATED,
    OWNED,
    SERVICE,
    SESSION,
    ContainerInfo,
    plan_session_container,
    session_container,
    session_network,
)
from corral.model.hosts import parse_engine_url
from corral.model.placement import fit, session_candidate
from corral.model.readiness import Verdict, dependencies, judge
from corral.model.stack_spec import ServiceSpec, StackSpec
from corral.model.subnets import SubnetPool, containers_per_block
from corral.model.templates import (
    ParamsInvalid,
    TemplateSpec,
    bind,
    instantiate,
    parse_template,
    placeholder,
    reservation,
)
from corral.model.views import (
    ACTIVE_STATES,
    UNKNOWN,
    Endpoint,
    EventView,
    HostView,
    ParameterView,
    SessionView,
    TemplateView,
)
from corral.model.yamlfile import FileInvalid
from corral.store.leadership import StaleTerm
from corral.store.sessions import SessionStore, StoredSession, StoredTemplate, TemplateStore
from corral.store.tables import utcnow
from corral.waits import pause

log = structlog.get_logger("corral.sessions")
T = TypeVar("T")
LOG_TAIL = 200  # lines of each container's output kept after clean-up
MAX_TTL_S = 7 * 86400.0
SETTLE_SECONDS = 600.0  # how long a request waits for running (image builds included)
SWEEP_SECONDS = 10.0  # how often leftovers of cleaned sessions are looked for
PARSED_KEPT = 64  # template texts whose parsed spec is kept


class NotReady(Exception):
    """A dependency that will not become ready; the session fails with this reason."""


@dataclass(frozen=True)
class _Instance:
    stored: StoredSession
    template: TemplateSpec
    stack: StackSpec


class SessionService:
    def __init__(
        self,
        templates: TemplateStore,
        store: SessionStore,
        hosts: HostService,
        bus: EventBus,
        settings: Settings,
        images: ImageSupply,
    ) -> None:
        self.templates = templates
        self.store = store
        self.hosts = hosts
        self.bus = bus
        self.settings = settings
        self.images = images
        self._place_lock = asyncio.Lock()
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._cleaning: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        self._hurry = 0  # passes left at a short period after a poke
        self._swept = 0.0
        self._unknown: set[str] = set()  # active sessions whose host was found not answering
        self._parsed: dict[tuple[str, str | None], TemplateSpec] = {}
        self._subnets: dict[str, SubnetPool] = {}  # per host: the session networks' blocks
        self._subnet_reads: dict[str, asyncio.Lock] = {}
        bus.watch(CONTAINER, self._engine_event)

    # ------------------------------------------------------------------ templates
    def _parse(self, file: str, name: str | None, base_dir: str) -> TemplateSpec:
        """The template's spec; a text parsed before is not parsed again (each session
        request and each start reads its template)."""
        base_folder(base_dir)
        known = self._parsed.get((file, name))
        if known is not None:
            return known
        try:
            spec = parse_template(file, f"template {name or ''}".strip(), name)
        except FileInvalid as exc:
            problems = [str(p) for p in exc.problems]
            raise Invalid(f"template is invalid: {problems[0]}", {"problems": problems}) from None
        if len(self._parsed) >= PARSED_KEPT:
            self._parsed.clear()
        self._parsed[(file, name)] = spec
        return spec

    async def add_template(self, file: str, name: str | None, base_dir: str) -> tuple[str, str]:
        """Register or replace a template; returns (name, created|updated|unchanged)."""
        spec = self._parse(file, name, base_dir)
        # The images must be buildable from base_dir: instantiate once to check paths.
        self._instantiate(spec, {p.name: p.default for p in spec.parameters.values()}, base_dir)
        outcome = await self.templates.put(spec.name, file, base_dir)
        if outcome != "unchanged":
            await self.bus.emit(
                f"template.{outcome}", f"template/{spec.name}", f"template {spec.name} {outcome}"
            )
        return spec.name, outcome

    async def load_folder(self, folder: Path) -> list[str]:
        """Add every *.yml / *.yaml template in `folder` (at start-up)."""
        added = []
        for path, text in await asyncio.to_thread(_template_files, folder):
            try:
                name, _ = await self.add_template(text, None, str(path.parent.resolve()))
            except Invalid as exc:
                detail = exc.detail if isinstance(exc.detail, dict) else {}
                problems = detail.get("problems") or [exc.message]
                raise Invalid(f"{path}: {problems[0]}", {"problems": problems}) from None
            added.append(name)
        return added

    async def template(self, name: str) -> TemplateView:
        return self._template_view(await self.templates.get(name))

    async def template_views(self) -> list[TemplateView]:
        return [self._template_view(t) for t in await self.templates.list()]

    async def remove_template(self, name: str) -> None:
        await self.templates.remove(name)
        await self.bus.emit("template.removed", f"template/{name}", f"template {name} removed")

    def _template_view(self, stored: StoredTemplate) -> TemplateView:
        spec = self._parse(stored.file, stored.name, "")
        defaults = {p.name: p.default for p in spec.parameters.values()}
        try:
            stack = self._instantiate(spec, defaults, stored.base_dir)
            services = sorted(stack.services)
            cpus, memory = reservation(spec, stack)
        except Invalid:
            services, cpus, memory = [], spec.cpus or 0.0, spec.memory or 0
        return TemplateView(
            name=stored.name,
            description=spec.description,
            parameters=[
                ParameterView(
                    name=p.name,
                    type=p.type,
                    default=p.default,
                    min=p.minimum,
                    max=p.maximum,
                    choices=list(p.choices),
                    description=p.description,
                    render=p.render,
                )
                for p in spec.parameters.values()
            ],
            services=services,
            cpus=cpus,
            memory=memory,
            ttl_s=spec.ttl_s,
            base_dir=stored.base_dir,
            created_at=stored.created_at,
            updated_at=stored.updated_at,
        )

    def _instantiate(
        self, spec: TemplateSpec, values: dict[str, Any], base_dir: str, session: str = "CHECK"
    ) -> StackSpec:
        filled = {k: v for k, v in values.items() if v is not None}
        for param in spec.parameters.values():
            filled.setdefault(param.name, placeholder(param))  # a required one, for a check
        try:
            return instantiate(
                spec,
                filled,
                session,
                session_network(session),
                Path(base_dir) if base_dir else None,
                read_utf8,
            )
        except FileInvalid as exc:
            problems = [str(p) for p in exc.problems]
            raise Invalid(
                f"template {spec.name} gives an invalid stack: {problems[0]}",
                {"problems": problems},
            ) from None

    # ------------------------------------------------------------------ sessions
    async def create(
        self,
        template: str,
        params: dict[str, Any],
        ttl_s: float | None = None,
        queue: bool = False,
        wait: bool = True,
    ) -> SessionView:
        """Record a session on a host with room (or queue it) and start it; with `wait`,
        return once it runs, fails or the wait ends."""
        stored = await self.templates.get(template)
        spec = self._parse(stored.file, stored.name, "")
        try:
            values = bind(spec, params)
        except ParamsInvalid as exc:
            raise Invalid(
                f"bad parameters for template {template}: {exc}",
                {
                    "problems": [f"{k}: {v}" for k, v in exc.problems.items()],
                    "parameters": sorted(exc.problems),
                },
            ) from None
        ttl = spec.ttl_s if ttl_s is None else ttl_s
        if not 1 <= ttl <= MAX_TTL_S:
            raise Invalid(f"ttl {ttl} s is outside 1 s to 7 days", {"field": "ttl"})
        session = secrets.token_hex(8).upper()
        stack = self._instantiate(spec, values, stored.base_dir, session)
        room = containers_per_block(self.settings.session_subnet_prefix)
        if len(stack.services) > room:
            raise Invalid(
                f"template {template} has {len(stack.services)} services; a session network "
                f"(a /{self.settings.session_subnet_prefix} of session_subnets) holds {room}",
                {"field": "session_subnet_prefix"},
            )
        cpus, memory = reservation(spec, stack)
        async with self._place_lock:
            host, why = await self._choose(stack, cpus, memory)
            if host is not None and await self._take_subnet(host, session) is None:
                why, host = self._pool_used_up(host), None
            if host is None and not queue:
                raise NoRoom(
                    f"no host has room for a {template} session: {why}",
                    {"template": template, "cpus": cpus, "memory": memory, "reason": why},
                )
            await self.store.add(
                id=session,
                template=template,
                file=stored.file,
                base_dir=stored.base_dir,
                params=dict(values),
                host=host or "",
                network=session_network(session),
                cpus=cpus,
                memory=memory,
                ttl_s=ttl,
                reason="" if host else f"queued: {why}",
                services={name: session_container(session, name) for name in stack.services},
                expires_at=utcnow() + timedelta(seconds=ttl),
            )
        where = f"on {host}" if host else f"queued ({why})"
        await self.bus.emit(
            "session.pending",
            f"session/{session}",
            f"session {session} of {template} {where}",
            {"template": template, "host": host or "", "params": dict(values)},
        )
        if host:
            self._launch(session)
        if wait:
            return await self._settle(session, SETTLE_SECONDS)
        return await self.view(session)

    async def _choose(self, stack: StackSpec, cpus: float, memory: int) -> tuple[str | None, str]:
        """The reachable host with the most free CPU that meets every constraint, or None
        and why not (model/placement.py `fit`)."""
        reserved = await self.store.reserved()
        hosts = [
            session_candidate(h, reserved.get(h.name, (0.0, 0, 0)))
            for h in await self.hosts.views()
        ]
        return fit(stack, hosts, cpus, memory, self.settings.sessions_per_host)

    def _launch(self, session: str) -> None:
        if session in self._starting:
            return
        task = asyncio.create_task(self._start(session))
        self._starting[session] = task
        task.add_done_callback(lambda _: self._starting.pop(session, None))

    async def _settle(self, session: str, patience: float) -> SessionView:
        deadline = time.monotonic() + patience
        starting = self._starting.get(session)
        if starting is not None:  # its end is the answer: no polling of the store
            await asyncio.wait({starting}, timeout=patience)
        while True:
            view = await self.store.view(session)
            if view.state not in ("pending", "starting") or time.monotonic() > deadline:
                return view
            if view.state == "pending" and not view.host:
                return view  # queued: answer now, the caller follows it
            await asyncio.sleep(0.05)

    async def _load(self, session: str) -> _Instance:
        stored = await self.store.get(session)
        spec = self._parse(stored.file, stored.template, "")
        stack = self._instantiate(spec, stored.params, stored.base_dir, session)
        return _Instance(stored, spec, stack)

    async def _start(self, session: str) -> None:
        started = time.monotonic()
        resource = f"session/{session}"
        try:
            inst = await self._load(session)
            if not await self.store.transition(session, "starting"):
                return
            await self.bus.emit("session.starting", resource, f"session {session} starting")
            host = inst.stored.host
            drivers = await self.hosts.drivers_up()
            if host not in drivers:
                raise Unreachable(f"host {host} is unreachable")
            driver = drivers[host]
            labels = {OWNED: "true", SESSION: session, CREATED: str(int(time.time()))}
            await _all(
                self._ensure_network(host, driver, session, inst.stored.network, labels),
                *(
                    self.images.ensure(drivers, host, svc, resource, recent=True)
                    for svc in inst.stack.services.values()
                ),
            )
            made = await _all(
                *(
                    self._create(drivers, host, session, svc, resource)
                    for svc in inst.stack.services.values()
                )
            )
            ids = dict(zip(inst.stack.services, made, strict=True))
            address = _client_address(await self.hosts.view(host))
            endpoints: list[Endpoint] = []
            # Nothing is written between two `docker start`s: the containers' ids and start
            # times go with the move to running (a start cut short is cleaned by label).
            started_at: dict[str, tuple[str, datetime]] = {}
            for wave in inst.stack.waves():
                await self._wait_ready(inst, driver, ids, wave)
                if (await self.store.get(session)).state != "starting":
                    return  # cancelled or expired meanwhile; the reaper removes what exists
                for found in await _all(
                    *(self._run(inst, driver, s, ids[s], address, started_at) for s in wave)
                ):
                    endpoints += found
            if await self.store.running(session, started_at, [e.model_dump() for e in endpoints]):
                took = time.monotonic() - started
                shown = ", ".join(f"{e.service} {e.address}:{e.host_port}" for e in endpoints)
                await self.bus.emit(
                    "session.running",
                    resource,
                    f"session {session} running on {host} after {took:.2f} s"
                    + (f" ({shown})" if shown else ""),
                    {"seconds": round(took, 3), "host": host},
                )
        except (CorralError, NotReady) as exc:
            reason = exc.message if isinstance(exc, CorralError) else str(exc)
            await self._end(session, "failed", reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("session start crashed", session=session)
            await self._end(session, "failed", f"internal error: {type(exc).__name__}: {exc}")

    async def _create(
        self,
        drivers: dict[str, HostDriver],
        host: str,
        session: str,
        svc: ServiceSpec,
        resource: str,
    ) -> str:
        """Create one container (not started); an image gone since it was last found there
        is supplied again, once."""
        plan = plan_session_container(session, svc)
        try:
            return await self.hosts.call(drivers[host].create, plan, False)
        except ImageMissing:
            pass
        self.images.forget(host, svc.image)
        await self.images.ensure(drivers, host, svc, resource)
        return await self.hosts.call(drivers[host].create, plan, False)

    async def _run(
        self,
        inst: _Instance,
        driver: HostDriver,
        service: str,
        container: str,
        address: str,
        started_at: dict[str, tuple[str, datetime]],
    ) -> list[Endpoint]:
        """Start one container and note when; the endpoints it publishes (read at once: a
        quick one may be gone by the time the session runs)."""
        await self.hosts.call(driver.start, container)
        # Docker's own start time replaces this one when the history is kept at clean-up.
        started_at[service] = (container, utcnow())
        if not inst.stack.services[service].ports:
            return []
        details = await self.hosts.call(driver.details, container)
        out: dict[tuple[int, str], Endpoint] = {}
        for port in details.ports:
            key = (port.container_port, port.protocol)
            if key in out and ":" in port.host_ip:
                continue  # Docker binds IPv4 and IPv6: show the IPv4 one
            bound = port.host_ip if port.host_ip not in ("", "0.0.0.0", "::") else address
            out[key] = Endpoint(
                service=service,
                port=port.container_port,
                protocol=port.protocol,
                address=bound,
                host_port=port.host_port,
            )
        return list(out.values())

    # ------------------------------------------------------------------ subnets
    def _pool(self, host: str) -> SubnetPool:
        pool = self._subnets.get(host)
        if pool is None:
            pool = SubnetPool(self.settings.session_subnets, self.settings.session_subnet_prefix)
            self._subnets[host] = pool
        return pool

    async def _read_networks(self, host: str, driver: HostDriver | None, again: bool) -> None:
        """Learn the subnets of the engine's networks (once per host, and `again` after the
        engine refused a block): no session block may overlap them."""
        pool = self._pool(host)
        async with self._subnet_reads.setdefault(host, asyncio.Lock()):
            if pool.known and not again:
                return
            if driver is None:
                driver = await self.hosts.driver(host)
            pool.note_engine(await self.hosts.call(driver.network_subnets))

    async def _take_subnet(
        self, host: str, session: str, driver: HostDriver | None = None
    ) -> str | None:
        """The session's block of the pool on `host` (held until it is cleaned), or None
        when the pool is used up there."""
        pool = self._pool(host)
        if not pool.known:
            await self._read_networks(host, driver, again=False)
        return pool.take(session, session_network(session))

    def _pool_used_up(self, host: str) -> str:
        pool = self._pool(host)
        return (
            f"the session subnet pool session_subnets={pool.pool} (/{pool.prefix} blocks) is "
            f"used up on {host}: {len(pool.held)} sessions hold a block, the rest overlap the "
            "engine's networks; widen session_subnets or wait until sessions are cleaned"
        )

    async def _ensure_network(
        self, host: str, driver: HostDriver, session: str, network: str, labels: dict[str, str]
    ) -> None:
        """The session's bridge network on its own block (Docker's default pools end after
        about 30 networks); a block the engine refuses as overlapping is set aside."""
        for _ in range(3):
            subnet = await self._take_subnet(host, session, driver)
            if subnet is None:
                raise NoRoom(self._pool_used_up(host), {"pool": self.settings.session_subnets})
            try:
                await self.hosts.call(
                    driver.ensure_network, network, "bridge", False, subnet, labels
                )
                return
            except SubnetTaken:
                log.info("session subnet refused", session=session, subnet=subnet)
                self._pool(host).refuse(session, network)
                await self._read_networks(host, driver, again=True)
        raise Invalid(f"the engine of {host} refused three subnets for {network}")

    def _release_subnet(self, stored: StoredSession) -> None:
        if stored.host in self._subnets:
            self._subnets[stored.host].release(stored.id, stored.network)

    async def _wait_ready(
        self, inst: _Instance, driver: HostDriver, ids: dict[str, str], wave: list[str]
    ) -> None:
        """Before a wave starts, everything it depends on must be ready (all at once; the
        first that will not be fails the session)."""
        deadline = time.monotonic() + inst.template.ready_timeout_s
        await _all(
            *(
                self._ready(driver, inst.stack.services[dep], ids[dep], condition, deadline)
                for dep, condition in dependencies(inst.stack, wave)
            )
        )

    async def _ready(
        self, driver: HostDriver, svc: ServiceSpec, container: str, condition: str, deadline: float
    ) -> None:
        async def look() -> Verdict:
            details = await self.hosts.call(driver.details, container)
            verdict = judge(svc, condition, details)
            if verdict.outcome == "probe":
                listening = await self.hosts.call(driver.listening_ports, container, details.pid)
                verdict = judge(svc, condition, details, listening)
            return verdict

        verdict = await until_decided(look, deadline, 0.02, 0.25)
        if verdict.outcome == "failed":
            raise NotReady(verdict.why)
        if verdict.outcome == "waiting":
            raise NotReady(f"{svc.name} {verdict.why} in time (the template's ready_timeout)")

    # ------------------------------------------------------------------ ending
    async def _end(self, session: str, state: str, reason: str) -> bool:
        """Move an active session to a final state and stop what still runs."""
        if not await self.store.transition(session, state, reason):
            return False
        starting = self._starting.get(session)
        if starting is not None and starting is not asyncio.current_task():
            starting.cancel()  # it would go on starting containers of an ended session
        self.poke()  # its clean-up may be due at once
        await self.bus.emit(
            f"session.{state}",
            f"session/{session}",
            f"session {session} {state}" + (f": {reason}" if reason else ""),
            {"reason": reason},
        )
        stored = await self.store.get(session)
        driver = (await self.hosts.drivers_up()).get(stored.host) if stored.host else None
        if driver is not None:

            async def stop(on: HostDriver) -> None:
                found = await self.hosts.call(on.containers, {OWNED: "true", SESSION: session})
                await asyncio.gather(
                    *(
                        self.hosts.call(on.stop, c.id, 2.0)
                        for c in found
                        if c.state in ("running", "restarting")
                    ),
                    return_exceptions=True,
                )

            with contextlib.suppress(CorralError):  # a host cut off meanwhile included
                await self.hosts.while_reachable(stored.host, stop(driver))
        return True

    async def cancel(self, session: str) -> SessionView:
        """Stop and remove a session now (DELETE); idempotent."""
        stored = await self.store.get(session)
        task = self._starting.get(session)
        if stored.state in ACTIVE_STATES:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._end(session, "cancelled", "cancelled by request")
        stored = await self.store.get(session)
        if stored.cleaned_at is None:
            try:
                await self._clean(stored)
            except CorralError as exc:  # the monitor retries; the answer says not cleaned
                log.info("clean-up postponed", session=session, error=exc.message)
        return await self.store.view(session)

    async def _clean(self, stored: StoredSession) -> None:
        """Keep each container's end and log tail, then remove what the session owns."""
        lock = self._cleaning.setdefault(stored.id, asyncio.Lock())
        async with lock:
            if (await self.store.get(stored.id)).cleaned_at is not None:
                return  # another caller cleaned it while this one waited
            self.store.db.term.confirm()
            host = {h.name: h for h in await self.hosts.views()}.get(stored.host or "")
            if host is not None:
                # A host cut off midway is given up on (Unreachable): cleaned when it answers.
                await self.hosts.while_reachable(
                    host.name, self._remove_owned(stored.id, self.hosts.driver_for(host))
                )
            await self.store.mark_cleaned(stored.id, utcnow())
            self._release_subnet(stored)
            await self.bus.emit(
                "session.cleaned",
                f"session/{stored.id}",
                f"session {stored.id}: containers and network removed",
            )
        self._cleaning.pop(stored.id, None)

    async def _remove_owned(self, session: str, driver: HostDriver) -> None:
        """Keep the history of the session's containers, then remove them and its network."""
        owned = {OWNED: "true", SESSION: session}
        found = await self.hosts.call(driver.containers, owned)
        await asyncio.gather(*(self._keep_history(session, driver, c) for c in found))
        await asyncio.gather(*(self.hosts.call(driver.remove, c.id) for c in found))
        for net in await self.hosts.call(driver.networks, owned):
            await self.hosts.call(driver.remove_network, net)

    async def _keep_history(self, session: str, driver: HostDriver, c: ContainerInfo) -> None:
        service = c.labels.get(SERVICE, "")
        try:
            details = await self.hosts.call(driver.details, c.id)
            chunks = await self.hosts.call(lambda: b"".join(driver.logs(c.id, LOG_TAIL, False)))
        except NotFound:
            return  # gone already: what was recorded while it ran stays
        values: dict[str, Any] = {"logs": chunks.decode(errors="replace")[-65536:]}
        if details.state in ("exited", "dead"):
            values.update(exit_code=details.exit_code, finished_at=details.finished_at)
        if details.started_at is not None:
            values["started_at"] = details.started_at
        await self.store.set_container(session, service, container_id=c.id, **values)

    # ------------------------------------------------------------------ watching
    async def shutdown(self) -> None:
        """Stop start-up tasks (at process stop); a later start finds them by state."""
        tasks = list(self._starting.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def recover(self) -> None:
        """At start: sessions caught mid-start by a crash fail (and are cleaned); those
        placed but not begun begin."""
        for stored in await self.store.unfinished():
            if stored.state == "starting":
                await self._end(
                    stored.id, "failed", "corral restarted while the session was starting"
                )
            elif stored.state == "pending" and stored.host:
                self._launch(stored.id)

    async def run_monitor(self, stop: asyncio.Event) -> None:
        """Follow every unfinished session: exits, expiry, queue, clean-up."""
        while not stop.is_set():
            self._wake.clear()  # pokes from here on (even during the check) count
            try:
                await self._check_all()
            except StaleTerm as exc:  # this replica stops leading: `stop` follows
                log.info("session check skipped", error=exc.message)
            except Exception:
                log.exception("session check failed")
            period = self.settings.session_check_seconds
            if self._hurry > 0:  # an engine reports a death a moment before its listing does
                self._hurry -= 1
                period = min(period, 0.1)
            await pause(period, stop, self._wake)

    def _engine_event(self, event: EventView) -> None:
        """An engine's container event (control/engine_events.py): a session container
        that died means a check soon (a start needs none: the session's start saw it)."""
        if event.data["attributes"].get(SESSION) and event.data["action"] in ("die", "oom"):
            self.poke()

    def poke(self) -> None:
        """Check soon (a session container died on some engine)."""
        self._hurry = 5
        self._wake.set()

    async def _check_all(self) -> None:
        self.store.db.term.confirm()  # a pass acts on engines only while this replica leads
        if time.monotonic() - self._swept > SWEEP_SECONDS:
            self._swept = time.monotonic()
            await self._sweep()
        sessions = await self.store.unfinished()
        if not sessions:
            return
        hosts = {h.name: h for h in await self.hosts.views()}
        seen: dict[str, list[ContainerInfo]] = {}
        for name in sorted({s.host for s in sessions if s.host}):
            if name in hosts and hosts[name].reachable:
                driver = self.hosts.driver_for(hosts[name])
                with contextlib.suppress(CorralError):  # an engine cut off meanwhile included
                    seen[name] = await self.hosts.while_reachable(
                        name, self.hosts.call(driver.containers, {OWNED: "true", SESSION: ""})
                    )
        await self._announce_unknown(sessions, hosts, seen)
        now = utcnow()
        work: list[Coroutine[Any, Any, Any]] = []
        for stored in sessions:
            if stored.state == "pending" and not stored.host:
                if stored.expires_at is not None and stored.expires_at <= now:
                    work.append(self._end(stored.id, "expired", "its ttl ran out in the queue"))
                else:
                    try:
                        await self._place_queued(stored)  # in order: first come, first placed
                    except CorralError as exc:
                        work.append(self._end(stored.id, "failed", exc.message))
            else:
                work.append(self._check(stored, seen, set(hosts), now))
        for failure in await asyncio.gather(*work, return_exceptions=True):
            if isinstance(failure, CorralError):
                log.info("session check postponed", error=failure.message)
            elif isinstance(failure, BaseException):
                log.error("session check failed", error=repr(failure))

    async def _announce_unknown(
        self,
        sessions: list[StoredSession],
        hosts: dict[str, HostView],
        seen: dict[str, list[ContainerInfo]],
    ) -> None:
        """One event when an active session's host stops answering (shown `unknown`), and
        one when the host answers again and the session is followed anew."""
        for stored in sessions:
            host = hosts.get(stored.host)
            if stored.state not in ACTIVE_STATES or host is None:
                self._unknown.discard(stored.id)
                continue
            if host.reachable is False and stored.id not in self._unknown:
                self._unknown.add(stored.id)
                await self.bus.emit(
                    "session.unknown",
                    f"session/{stored.id}",
                    f"session {stored.id}: its host {host.name} does not answer "
                    f"({host.last_error or 'unreachable'}); it was {stored.state}, what became "
                    "of it is found out when the host answers",
                    {"host": host.name, "was": stored.state},
                )
            elif stored.host in seen and stored.id in self._unknown:
                self._unknown.discard(stored.id)
                await self.bus.emit(
                    "session.found",
                    f"session/{stored.id}",
                    f"session {stored.id}: its host {host.name} answers again; following it",
                    {"host": host.name},
                )

    async def _check(
        self,
        stored: StoredSession,
        seen: dict[str, list[ContainerInfo]],
        hosts: set[str],
        now: datetime,
    ) -> None:
        """One session's turn: expiry, then exits while it runs, clean-up once it ended."""
        if stored.state in ACTIVE_STATES:
            if stored.host and stored.host not in hosts:
                await self._end(stored.id, "failed", f"its host {stored.host} was removed")
            elif stored.expires_at is not None and stored.expires_at <= now:
                await self._end(stored.id, "expired", f"its ttl of {stored.ttl_s:g} s ran out")
            elif stored.state == "running" and stored.host in seen:
                mine = [c for c in seen[stored.host] if c.labels.get(SESSION) == stored.id]
                await self._observe(stored, mine)
            return
        grace = timedelta(seconds=self.settings.session_grace_seconds)
        due = stored.ended_at is None or stored.ended_at + grace <= now
        if due and (not stored.host or stored.host in seen or stored.host not in hosts):
            await self._clean(stored)

    async def _sweep(self) -> None:
        """Remove containers and networks of sessions already cleaned: made by a create
        still in flight when its session was cancelled. Sessions this store does not know
        belong to someone else and are left alone."""
        for host in await self.hosts.views():
            if not host.reachable:
                continue
            try:
                driver = self.hosts.driver_for(host)
                owned = {OWNED: "true", SESSION: ""}
                found = await self.hosts.call(driver.containers, owned)
                networks = await self.hosts.call(driver.networks, owned)
                ids = {c.labels.get(SESSION, "") for c in found}
                ids |= {labels.get(SESSION, "") for labels in networks.values()}
                done = await self.store.cleaned(ids - {""})
                for c in found:
                    if c.labels.get(SESSION) in done:
                        await self.hosts.call(driver.remove, c.id)
                for name, labels in networks.items():
                    if labels.get(SESSION) in done:
                        await self.hosts.call(driver.remove_network, name)
            except CorralError as exc:
                log.info("session sweep skipped", host=host.name, error=exc.message)

    async def _place_queued(self, stored: StoredSession) -> None:
        inst = await self._load(stored.id)
        async with self._place_lock:
            host, why = await self._choose(inst.stack, stored.cpus, stored.memory)
            if host is not None and await self._take_subnet(host, stored.id) is None:
                why, host = self._pool_used_up(host), None
            if host is None:
                await self.store.update(stored.id, reason=f"queued: {why}")
                return
            await self.store.update(stored.id, host=host, reason="")
        await self.bus.emit(
            "session.placed", f"session/{stored.id}", f"session {stored.id} placed on {host}"
        )
        self._launch(stored.id)

    async def _observe(self, stored: StoredSession, found: list[ContainerInfo]) -> None:
        by_id = {c.id: c for c in found}
        driver = await self.hosts.driver(stored.host)
        failed: list[str] = []
        done = 0
        rows = await self.store.containers(stored.id)
        for row in rows:
            c = by_id.get(row.container_id)
            if c is None:
                failed.append(f"container {row.name} disappeared")
                continue
            if c.state not in ("exited", "dead"):
                continue
            done += 1
            if row.state != "exited":
                details = await self.hosts.call(driver.details, c.id)
                await self.store.set_container(
                    stored.id,
                    row.service,
                    state="exited",
                    exit_code=details.exit_code,
                    finished_at=details.finished_at or utcnow(),
                )
                await self.bus.emit(
                    "session.container.exited",
                    f"session/{stored.id}",
                    f"{row.name} exited with code {details.exit_code}",
                    {"service": row.service, "exit_code": details.exit_code},
                )
                code = details.exit_code
            else:
                code = row.exit_code or 0
            if code != 0:
                failed.append(f"{row.service} exited with code {code}")
        if failed:
            await self._end(stored.id, "failed", "; ".join(failed))
        elif rows and done == len(rows):
            await self._end(stored.id, "completed", "every container exited with code 0")

    # ------------------------------------------------------------------ reading
    async def view(self, session: str) -> SessionView:
        return (await self._shown([await self.store.view(session)]))[0]

    async def views(
        self, state: str | None = None, template: str | None = None, limit: int = 200
    ) -> list[SessionView]:
        """Newest first; `state` as shown (an active session whose host does not answer is
        `unknown`, not the state it had)."""
        if state is None or (state != UNKNOWN and state not in ACTIVE_STATES):
            states = None if state is None else [state]
            return await self._shown(
                await self.store.views(states=states, template=template, limit=limit)
            )
        # Active sessions are few (each holds room on a host): all are read, then filtered.
        active = await self._shown(
            await self.store.views(states=ACTIVE_STATES, template=template, limit=None)
        )
        return [v for v in active if v.state == state][:limit]

    async def _shown(self, views: list[SessionView]) -> list[SessionView]:
        """Active sessions on a host that does not answer, shown `unknown` with why: their
        containers may have stopped or may still run, nobody can tell until it answers."""
        if not any(v.state in ACTIVE_STATES and v.host for v in views):
            return views
        hosts = {h.name: h for h in await self.hosts.views()}
        return [_unknown(v, hosts.get(v.host)) for v in views]

    async def logs(
        self, session: str, service: str, tail: int, follow: bool
    ) -> AsyncIterator[bytes]:
        """A container's output: live while it exists, else the tail kept at clean-up."""
        stored = await self.store.get(session)
        rows = {r.service: r for r in await self.store.containers(session)}
        if service not in rows:
            known = ", ".join(sorted(rows)) or "none"
            raise NotFound(f"session {session} has no service {service!r} (it has {known})")
        row = rows[service]
        if stored.cleaned_at is not None or not row.container_id:
            lines = row.logs.splitlines(keepends=True)
            yield "".join(lines[-tail:] if tail else lines).encode()
            return
        sent = False
        try:
            async for chunk in self.hosts.container_logs(
                stored.host, row.container_id, tail, follow
            ):
                sent = True
                yield chunk
        except NotFound:  # removed by the reaper meanwhile: serve what it kept
            if sent:
                return
            kept = {r.service: r for r in await self.store.containers(session)}[service].logs
            yield "".join(kept.splitlines(keepends=True)[-tail:] if tail else [kept]).encode()


async def _all(*work: Coroutine[Any, Any, T]) -> list[T]:
    """Run the work together; on the first failure cancel the rest and raise that failure
    (a start that failed leaves no branch going on behind it)."""
    tasks: list[asyncio.Task[T]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(w) for w in work]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]


def _template_files(folder: Path) -> list[tuple[Path, str]]:
    if not folder.is_dir():
        raise Invalid(f"templates_dir {folder} is not a folder")
    paths = sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")])
    return [(path, path.read_text(encoding="utf-8")) for path in paths]


def _unknown(view: SessionView, host: HostView | None) -> SessionView:
    if view.state not in ACTIVE_STATES or host is None or host.reachable is not False:
        return view
    since = f" since {host.state_since:%Y-%m-%d %H:%M:%S} UTC" if host.state_since else ""
    why = host.last_error or "unreachable"
    return view.model_copy(
        update={
            "state": UNKNOWN,
            "reason": f"its host {host.name} does not answer{since} ({why}); it was "
            f"{view.state}, what became of it is found out when the host answers",
        }
    )


def _client_address(host: HostView) -> str:
    """The address clients use to reach ports published on this host."""
    address = parse_engine_url(host.url)
    if address.scheme == "unix" or not address.host:
        return "127.0.0.1"
    return address.host
