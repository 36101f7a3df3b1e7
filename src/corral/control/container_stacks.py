"""Container mode for stacks: corral places each replica on a host, creates its container,
starts it in depends_on waves and restarts it when it dies.

The runner (control/runner.py) the stack service (control/stacks.py) uses for stacks whose
file does not say `x-corral: {mode: swarm}`: check before apply, converge on every pass,
restarts on the engines' container events. Placement is model/placement.py `place`; the
dependency waits are control/readiness.py's.
"""

import asyncio
import time
from dataclasses import dataclass, field
from functools import partial

from corral.control.hosts import HostService
from corral.control.images import ImageSupply
from corral.control.readiness import until_decided
from corral.errors import Conflict, CorralError, Invalid, Unreachable
from corral.events import EventBus
from corral.hosts.driver import HostDriver
from corral.model.containers import (
    CREATED,
    SERVICE,
    STACK,
    ContainerInfo,
    ContainerPlan,
    container_name,
    engine_names,
    owned_labels,
    plan_container,
)
from corral.model.placement import (
    HostCandidate,
    Placement,
    candidate,
    matching_hosts,
    place,
)
from corral.model.readiness import HEALTHY, READY, STARTED, Verdict, dependencies, judge
from corral.model.stack_spec import NetworkSpec, ServiceSpec, StackSpec
from corral.model.views import HostView
from corral.store.stacks import SlotState, StackStore, StoredStack

DEPENDENCY_WAIT_SECONDS = 120.0
DEPENDENCY_PAUSE_SECONDS = 0.25
BACKOFF_START, BACKOFF_MAX = 0.1, 10.0
STABLE_SECONDS = 10.0  # a container that ran this long restarts with the shortest back-off
WAITING = Verdict("waiting")
NOT_THERE = Verdict("failed", "its container is not there")


@dataclass
class _Pass:
    """One reconcile pass's view of the world."""

    name: str
    spec: StackSpec
    stored: StoredStack
    hosts: dict[str, HostView]
    drivers: dict[str, HostDriver]
    observed: dict[str, list[ContainerInfo]]
    placement: Placement
    networks: dict[str, str]
    volumes: dict[str, str]
    unmet: dict[str, str] = field(default_factory=dict)  # dependency -> why not satisfied
    # Containers created (not started) ahead of their wave, or why that failed.
    prepared: dict[tuple[str, int], str | CorralError] = field(default_factory=dict)


class ContainerStacks:
    def __init__(
        self, store: StackStore, hosts: HostService, bus: EventBus, images: ImageSupply
    ) -> None:
        self.store = store
        self.hosts = hosts
        self.bus = bus
        self.images = images
        self.start_requested: set[tuple[str, str]] = set()  # (stack, service) to start now
        self._backoffs = _Backoff()

    async def check(self, name: str, spec: StackSpec, hosts: list[HostView]) -> list[str]:
        """Constraints no host meets, images no host has and nothing can build, networks
        that would span hosts with no shared network."""
        candidates = _candidates(hosts, {})
        problems = _constraint_problems(spec, candidates)
        problems += await self.images.problems(spec, hosts)
        placement = place(spec, candidates, await self.store.placements(name))
        problems += _network_problems(spec, placement, {h.name: h for h in hosts})
        return problems

    async def check_can_leave(self, name: str) -> None:
        """Containers can always be removed (by label, now or when their host answers)."""

    async def release(self, name: str) -> int:
        """Nothing beyond the containers and networks, which the stack service removes."""
        return 0

    async def converge(
        self, name: str, stored: StoredStack, spec: StackSpec
    ) -> tuple[list[SlotState], bool]:
        """One pass: place, observe, remove strays, networks, create what is missing, then
        start wave by wave once each wave's dependencies are met. Returns the slots (and
        False: nothing is left moving that a pass soon would see)."""
        work = await self._observe(name, stored, spec)
        await self._remove_strays(work)
        await self._prepare_networks(work)
        # Create every missing container at once (images, volumes, create); only the
        # starts wait for their wave, so later waves do not pay for their creation.
        slots = [
            (svc, replica)
            for svc, spec in work.spec.services.items()
            for replica in range(1, spec.replicas + 1)
        ]
        made = await asyncio.gather(*(self._prepare(work, slot) for slot in slots))
        work.prepared = {
            slot: result for slot, result in zip(slots, made, strict=True) if result is not None
        }
        states: dict[tuple[str, int], SlotState] = {}
        for wave in work.spec.waves():
            await self._wait_for_dependencies(work, wave, states)
            self.store.db.term.confirm()
            jobs = [
                self._ensure_slot(work, svc, replica, states)
                for svc in wave
                for replica in range(1, work.spec.services[svc].replicas + 1)
            ]
            for state in await asyncio.gather(*jobs):
                states[(state.service, state.replica)] = state
        # A start asked for while this pass ran on a stored file that still said stopped
        # waits for the next pass (the request's own): only what this pass saw started ends.
        started = {(name, svc) for svc in work.spec.services if svc not in work.stored.stopped}
        self.start_requested -= started
        return list(states.values()), False

    async def _observe(self, name: str, stored: StoredStack, spec: StackSpec) -> _Pass:
        hosts = {h.name: h for h in await self.hosts.views()}
        loads = await self.store.host_loads()
        previous = await self.store.placements(name)
        for host in previous.values():
            loads[host] = loads.get(host, 1) - 1
        placement = place(spec, _candidates(list(hosts.values()), loads), previous)
        drivers: dict[str, HostDriver] = {}
        observed: dict[str, list[ContainerInfo]] = {}

        async def look(host: HostView) -> None:
            driver = self.hosts.driver_for(host)
            try:
                observed[host.name] = await self.hosts.while_reachable(
                    host.name, self.hosts.call(driver.containers, owned_labels(name))
                )
                drivers[host.name] = driver
            except Unreachable:
                pass

        await asyncio.gather(*(look(h) for h in hosts.values() if h.reachable))
        networks, volumes = engine_names(name, spec)
        return _Pass(name, spec, stored, hosts, drivers, observed, placement, networks, volumes)

    async def _remove_strays(self, work: _Pass) -> None:
        """Containers of this stack that no slot wants where they are, or doubles."""
        seen: set[tuple[str, int]] = set()
        doomed: list[tuple[HostDriver, ContainerInfo]] = []
        for host, found in sorted(work.observed.items()):
            for c in sorted(found, key=lambda c: (c.state != "running", c.name)):
                slot = (c.service, c.replica)
                wanted = work.placement.hosts.get(slot) == host and c.name == container_name(
                    work.name, *slot
                )
                if not wanted or slot in seen:
                    doomed.append((work.drivers[host], c))
                else:
                    seen.add(slot)
        for driver, c in doomed:
            await self.remove(driver, c)
            await self.bus.emit(
                "container.removed",
                f"stack/{work.name}/{c.service or '?'}",
                f"{c.name} removed: no longer declared here",
                {"container": c.name},
            )

    async def _prepare_networks(self, work: _Pass) -> None:
        """Networks first: a bridge per host, or one attachable overlay across a swarm."""
        for net, engine_name in work.networks.items():
            spec = work.spec.networks.get(net, NetworkSpec(net))
            users = [
                (svc, host)
                for (svc, _), host in work.placement.hosts.items()
                if net in work.spec.services[svc].networks
                and work.spec.services[svc].network_mode is None
            ]
            hosts = sorted({h for _, h in users if h in work.drivers})
            if not hosts or spec.external:
                continue
            labels = {**owned_labels(work.name), CREATED: str(int(time.time()))}
            overlay = spec.driver == "overlay" or (
                spec.driver is None
                and len({h for _, h in users}) > 1
                and all(_in_swarm(work.hosts[h]) for _, h in users)
            )
            try:
                if overlay:
                    manager = _manager(work.hosts, hosts)
                    if manager is None:
                        raise Invalid(f"network {net} needs a reachable swarm manager")
                    await self.hosts.call(
                        work.drivers[manager].ensure_network,
                        engine_name,
                        "overlay",
                        True,
                        spec.subnet,
                        labels,
                    )
                else:
                    for host in hosts:
                        await self.hosts.call(
                            work.drivers[host].ensure_network,
                            engine_name,
                            spec.driver or "bridge",
                            spec.attachable,
                            spec.subnet,
                            labels,
                        )
            except CorralError as exc:
                await self.bus.emit(
                    "network.failed", f"stack/{work.name}", f"network {net}: {exc.message}"
                )

    async def _wait_for_dependencies(
        self, work: _Pass, wave: list[str], states: dict[tuple[str, int], SlotState]
    ) -> None:
        """Before a wave starts, wait for the conditions its services declare (started is
        met by the start itself, as in compose); record in `work.unmet` the ones that failed
        or timed out."""
        deadline = time.monotonic() + DEPENDENCY_WAIT_SECONDS
        for dep, condition in dependencies(work.spec, wave):
            if condition == STARTED:
                continue
            slots = [s for s in states.values() if s.service == dep]
            verdict = WAITING
            if slots:
                verdict = await until_decided(
                    partial(self._condition_met, work, dep, condition, slots),
                    deadline,
                    DEPENDENCY_PAUSE_SECONDS,
                    DEPENDENCY_PAUSE_SECONDS,
                )
            if verdict.outcome != "ready":
                wanted = "healthy" if condition == HEALTHY else "completed"
                work.unmet[dep] = f"{dep} is not {wanted}"

    async def _condition_met(
        self, work: _Pass, service: str, condition: str, slots: list[SlotState]
    ) -> Verdict:
        """Every replica's verdict (model/readiness.py `judge`): the first that is not
        ready, in slot order."""
        if any(s.host not in work.drivers or not s.container_id for s in slots):
            return NOT_THERE
        seen: dict[str, ContainerInfo] = {}
        for host in {s.host for s in slots}:
            found = await self.hosts.call(
                work.drivers[host].containers, {STACK: work.name, SERVICE: service}
            )
            seen.update((c.id, c) for c in found)
        for slot in slots:
            c = seen.get(slot.container_id)
            if c is None:
                return NOT_THERE
            verdict = judge(work.spec.services[service], condition, c)
            if verdict.outcome != "ready":
                return verdict
        return READY

    async def _ensure_slot(
        self,
        work: _Pass,
        service: str,
        replica: int,
        states: dict[tuple[str, int], SlotState],
    ) -> SlotState:
        slot = (service, replica)
        spec = work.spec.services[service]
        resource = f"stack/{work.name}/{service}"
        host = work.placement.hosts.get(slot, "")
        if not host:
            reason = work.placement.pending.get(slot, "not placed")
            return SlotState(service, replica, "", "", "pending", reason=reason)
        if host not in work.drivers:
            why = work.hosts[host].last_error if host in work.hosts else "unknown host"
            reason = f"host {host} is unreachable: {why or 'no answer'}"
            return SlotState(service, replica, host, "", "pending", reason=reason)
        blocked = [
            d.service
            for d in spec.depends_on
            if any(
                s.service == d.service and s.state in ("pending", "failed") for s in states.values()
            )
        ]
        blocked += [work.unmet[d.service] for d in spec.depends_on if d.service in work.unmet]
        if blocked:
            reason = f"waiting for {', '.join(sorted(blocked))}"
            made = work.prepared.get(slot)
            ready = made if isinstance(made, str) else ""
            return SlotState(service, replica, host, ready, "pending", reason=reason)
        driver = work.drivers[host]
        plan = plan_container(work.name, spec, replica, work.networks, work.volumes)
        prepared = work.prepared.get(slot)
        try:
            if isinstance(prepared, CorralError):
                raise prepared
            if isinstance(prepared, str):
                await self.hosts.while_reachable(host, self.hosts.call(driver.start, prepared))
                await self.bus.emit(
                    "container.created",
                    resource,
                    f"{plan.name} started on {host}",
                    {"container": plan.name, "host": host, "id": prepared[:12]},
                )
                return SlotState(service, replica, host, prepared, "running")
            existing = next(
                (c for c in work.observed.get(host, []) if (c.service, c.replica) == slot), None
            )
            if existing is not None:
                stopped = service in work.stored.stopped
                # A host cut off meanwhile (a stop waits out the grace period) is given up on.
                return await self.hosts.while_reachable(
                    host, self._keep(work, driver, host, plan, existing, stopped)
                )
            if service in work.stored.stopped:
                return SlotState(service, replica, host, "", "stopped")
            return SlotState(service, replica, host, "", "pending", reason="not created yet")
        except CorralError as exc:
            await self.bus.emit(
                "container.failed",
                resource,
                f"{plan.name} on {host}: {exc.message}",
                {"container": plan.name, "host": host},
            )
            state = "pending" if isinstance(exc, Unreachable) else "failed"
            return SlotState(service, replica, host, "", state, reason=exc.message)

    async def _prepare(self, work: _Pass, slot: tuple[str, int]) -> str | CorralError | None:
        """Make the slot's container exist, not started: None when nothing was to be made
        (it exists unchanged, is stopped on purpose, or has no reachable host)."""
        service, replica = slot
        host = work.placement.hosts.get(slot, "")
        if host not in work.drivers or service in work.stored.stopped:
            return None
        spec = work.spec.services[service]
        driver = work.drivers[host]
        plan = plan_container(work.name, spec, replica, work.networks, work.volumes)
        existing = next(
            (c for c in work.observed.get(host, []) if (c.service, c.replica) == slot), None
        )
        if existing is not None and existing.spec_hash == plan.spec_hash:
            return None
        try:
            if existing is not None:
                await self.remove(driver, existing)
                work.observed[host] = [c for c in work.observed[host] if c is not existing]
                await self.bus.emit(
                    "container.replaced",
                    f"stack/{work.name}/{service}",
                    f"{plan.name} on {host}: spec changed, replacing",
                    {"container": plan.name, "host": host},
                )
            await self.images.ensure(work.drivers, host, spec, f"stack/{work.name}/{service}")
            await self._ensure_volumes(work, host, spec)
            return await self._create(driver, plan)
        except CorralError as exc:
            return exc

    async def _keep(
        self,
        work: _Pass,
        driver: HostDriver,
        host: str,
        plan: ContainerPlan,
        c: ContainerInfo,
        stopped: bool,
    ) -> SlotState:
        if stopped and c.state in ("running", "restarting"):
            self._backoffs.expect(c.name)
            await self.hosts.call(driver.stop, c.id, plan.spec.stop_grace_s)
            return SlotState(plan.service, plan.replica, host, c.id, "stopped")
        if stopped:
            return SlotState(plan.service, plan.replica, host, c.id, "stopped", c.health)
        if c.state == "created":  # made ahead of its wave (or by a pass that was cut short)
            await self.hosts.call(driver.start, c.id)
            return SlotState(plan.service, plan.replica, host, c.id, "running")
        why, data = "", {}
        if c.state in ("exited", "dead") and (work.name, plan.service) in self.start_requested:
            kind, why = "container.started", "started by request"
        elif c.state in ("exited", "dead") and _restarts(plan.spec, c):
            kind = "container.restarted"
            why = (
                f"restarted (restart: {plan.spec.restart}) after it exited with code {c.exit_code}"
            )
            data = {"exit_code": c.exit_code}
        if why:
            await self.hosts.call(driver.start, c.id)
            await self.bus.emit(
                kind,
                f"stack/{work.name}/{plan.service}",
                f"{c.name} on {host} {why}",
                {"container": c.name, "host": host, **data},
            )
            return SlotState(plan.service, plan.replica, host, c.id, "running")
        return SlotState(
            plan.service, plan.replica, host, c.id, c.state, c.health, exit_code=c.exit_code
        )

    async def _create(self, driver: HostDriver, plan: ContainerPlan) -> str:
        """Create (not start) the container."""
        try:
            return await self.hosts.call(driver.create, plan, False)
        except Conflict:
            # A container with this name exists but was not in this pass's view: one left
            # half-made by a crash. Remove it if it is ours, then create once more.
            found = await self.hosts.call(driver.containers, owned_labels(plan.stack))
            ours = [c for c in found if c.name == plan.name]
            if not ours:
                raise Conflict(
                    f"the name {plan.name} is taken by a container corral does not own"
                ) from None
            for c in ours:
                await self.hosts.call(driver.remove, c.id)
            return await self.hosts.call(driver.create, plan, False)

    async def remove(self, driver: HostDriver, c: ContainerInfo) -> None:
        """Remove a container, its death expected (no restart)."""
        self._backoffs.expect(c.name)
        await self.hosts.call(driver.remove, c.id)

    async def _ensure_volumes(self, work: _Pass, host: str, spec: ServiceSpec) -> None:
        for mount in spec.volumes:
            if mount.kind != "volume" or not mount.source:
                continue
            declared = work.spec.volumes.get(mount.source)
            if declared is not None and declared.external:
                continue
            await self.hosts.call(
                work.drivers[host].ensure_volume,
                work.volumes.get(mount.source, mount.source),
                owned_labels(work.name),
            )

    async def engine_event(self, host: str, action: str, attrs: dict[str, str]) -> float | None:
        """A container event of one of the stack's containers: a death not caused by corral
        is an event and a restart after a back-off (0.1 s, doubling to 10 s; the delay after
        which the stack wants a pass), a start is noted (0: a pass now); None: nothing to do."""
        stack, service, container = attrs.get(STACK), attrs.get(SERVICE), attrs.get("name", "")
        if not stack or action not in ("die", "start", "oom"):
            return None
        expected = self._backoffs.expected(container)
        if action == "die" and not expected:
            code = attrs.get("exitCode", "?")
            delay = self._backoffs.next_delay(container)
            await self.bus.emit(
                "container.died",
                f"stack/{stack}/{service}",
                f"{container} on {host} exited with code {code}; next start in {delay:g} s",
                {"container": container, "host": host, "exit_code": code, "restart_in": delay},
            )
            return delay
        if action == "start":
            self._backoffs.started(container)
        return 0.0


class _Backoff:
    """When to restart a container that died: 0.1 s after its death, doubling to 10 s while
    it keeps dying within 10 s of its start; deaths corral caused (a stop, a removal) are
    expected and not restarted."""

    def __init__(self) -> None:
        self._stopping: dict[str, float] = {}  # containers corral itself stops, until when
        self._backoff: dict[str, float] = {}  # next restart delay per container
        self._started_at: dict[str, float] = {}

    def expect(self, container: str) -> None:
        """Corral is about to stop or remove the container: its death is expected."""
        self._stopping[container] = time.monotonic() + 30

    def expected(self, container: str) -> bool:
        """Whether the container's next event was expected (each expectation serves once)."""
        return self._stopping.pop(container, 0) > time.monotonic()

    def started(self, container: str) -> None:
        self._started_at[container] = time.monotonic()

    def next_delay(self, container: str) -> float:
        """The delay before restarting a container that just died unexpectedly."""
        ran = time.monotonic() - self._started_at.get(container, 0.0)
        delay = (
            BACKOFF_START if ran > STABLE_SECONDS else self._backoff.get(container, BACKOFF_START)
        )
        self._backoff[container] = min(delay * 2, BACKOFF_MAX)
        return delay


def _restarts(spec: ServiceSpec, c: ContainerInfo) -> bool:
    if spec.restart in ("always", "unless-stopped"):
        return True
    return spec.restart == "on-failure" and c.exit_code != 0


def _in_swarm(host: HostView) -> bool:
    return bool(host.facts and host.facts.swarm_role in ("manager", "worker"))


def _manager(hosts: dict[str, HostView], among: list[str]) -> str | None:
    managers = [
        name
        for name, host in sorted(hosts.items())
        if host.facts is not None and host.facts.swarm_role == "manager"
    ]
    preferred = [h for h in managers if h in among]
    chosen = preferred or managers
    return chosen[0] if chosen else None


def _candidates(hosts: list[HostView], loads: dict[str, int]) -> list[HostCandidate]:
    return [candidate(h, loads.get(h.name, 0)) for h in hosts]


def _constraint_problems(spec: StackSpec, candidates: list[HostCandidate]) -> list[str]:
    problems = []
    for svc_name, svc in sorted(spec.services.items()):
        if svc.constraints and not matching_hosts(spec, svc_name, candidates):
            problems.append(
                f"line {svc.line}: services.{svc_name}.deploy.placement.constraints: "
                f"no host meets {svc.constraint_text}"
            )
    return problems


def _network_problems(
    spec: StackSpec, placement: Placement, hosts: dict[str, HostView]
) -> list[str]:
    problems = []
    for net, declared in sorted(spec.networks.items()):
        if declared.external or net == "default":
            continue
        spread = {
            h
            for (svc, _), h in placement.hosts.items()
            if net in spec.services[svc].networks and spec.services[svc].network_mode is None
        }
        if len(spread) > 1 and not all(h in hosts and _in_swarm(hosts[h]) for h in spread):
            problems.append(
                f"networks.{net}: its services run on {', '.join(sorted(spread))}, which share "
                "no network: join them in one Docker swarm (corral then makes an overlay)"
            )
    return problems
