"""Swarm mode for stacks: each compose service becomes a swarm service on a manager, and its
tasks are read back into corral's slots and events.

The runner (control/runner.py) the stack service (control/stacks.py) uses for stacks whose
file says `x-corral: {mode: swarm}`: check before apply, converge on every pass, release
(its services, at down or when the file leaves swarm mode).
"""

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import structlog

from corral.control.hosts import HostService
from corral.control.images import ImageSupply
from corral.errors import CorralError, Unreachable
from corral.events import EventBus
from corral.hosts.driver import HostDriver
from corral.model.containers import CREATED, OWNED, SERVICE, STACK, engine_names, owned_labels
from corral.model.events import EventFilter
from corral.model.placement import HostCandidate, candidate
from corral.model.stack_spec import NetworkSpec, ServiceSpec, StackSpec
from corral.model.swarm import (
    IN_FLUX_STATES,
    ROLLBACK_STATES,
    UPDATE_EVENTS,
    ServicePlan,
    SwarmNode,
    SwarmService,
    TaskSeen,
    TaskSlot,
    choose_nodes,
    hand_made_scale,
    node_slots,
    plan_service,
    seen_tasks,
    service_name,
    settled,
    task_news,
    task_slots,
)
from corral.model.views import HostView
from corral.store.stacks import SlotState, StoredStack

log = structlog.get_logger("corral.swarm")
SETTLE_SECONDS = 15.0  # after a create or update, wait this long at most for tasks to run
GONE_SECONDS = 60.0  # after removing services, wait this long at most for their containers
_UPDATE_WORDS = {
    "updating": "is updating",
    "completed": "updated",
    "paused": "update paused",
    "rollback_started": "is rolling back",
    "rollback_completed": "rolled back",
    "rollback_paused": "rollback paused",
}


def manager_of(hosts: list[HostView]) -> HostView | None:
    """The first reachable host whose engine is a swarm manager."""
    managers = [
        h
        for h in sorted(hosts, key=lambda h: h.name)
        if h.reachable and h.facts is not None and h.facts.swarm_role == "manager"
    ]
    return managers[0] if managers else None


def node_candidates(hosts: list[HostView]) -> dict[str, HostCandidate]:
    """Swarm node ID -> the corral host whose engine is that node."""
    return {
        h.facts.swarm_node_id: candidate(h)
        for h in hosts
        if h.facts is not None and h.facts.swarm_node_id and h.facts.swarm_role != "none"
    }


class SwarmStacks:
    def __init__(self, hosts: HostService, bus: EventBus, images: ImageSupply) -> None:
        self.hosts = hosts
        self.bus = bus
        self.images = images
        self._attempted: dict[tuple[str, str], str] = {}  # spec hash corral last sent
        self._reported: dict[tuple[str, str], str] = {}  # last UpdateStatus raised as event
        self._tasks: dict[tuple[str, str], TaskSeen] = {}  # what task events have said

    # ------------------------------------------------------------------ checks
    async def check(self, name: str, spec: StackSpec, hosts: list[HostView]) -> list[str]:
        """Problems that stop a swarm-mode apply: no reachable manager, a service that no
        swarm node corral knows may run, images no host has and nothing can build."""
        return await self._placement_problems(spec, hosts) + await self.images.problems(spec, hosts)

    async def _placement_problems(self, spec: StackSpec, hosts: list[HostView]) -> list[str]:
        manager = manager_of(hosts)
        if manager is None:
            seen = ", ".join(
                f"{h.name} ({h.facts.swarm_role if h.reachable and h.facts else 'unreachable'})"
                for h in sorted(hosts, key=lambda h: h.name)
            )
            return [
                "x-corral.mode: swarm mode needs a reachable swarm manager among the hosts, "
                f"and none is one ({seen or 'no hosts'})"
            ]
        driver = self.hosts.driver_for(manager)
        try:
            nodes = await self.hosts.call(driver.swarm_nodes)
        except CorralError as exc:
            return [f"x-corral.mode: swarm manager {manager.name}: {exc.message}"]
        candidates = node_candidates(hosts)
        problems = []
        for svc_name, svc in sorted(spec.services.items()):
            if choose_nodes(svc, nodes, candidates).allowed:
                continue
            if svc.constraints:
                problems.append(
                    f"line {svc.line}: services.{svc_name}.deploy.placement.constraints: "
                    f"no swarm node meets {svc.constraint_text}"
                )
            else:
                problems.append(
                    f"line {svc.line}: services.{svc_name}: no corral host is a node of the "
                    f"swarm {manager.name} manages"
                )
        return problems

    # ------------------------------------------------------------------ convergence
    async def converge(
        self, name: str, stored: StoredStack, spec: StackSpec
    ) -> tuple[list[SlotState], bool]:
        """One pass: make the stack's services match the file, then read their tasks.
        Returns the slots and whether something is still moving (tasks starting, an update
        or a rollback under way), so that the caller looks again soon."""
        hosts = await self.hosts.views()
        manager = manager_of(hosts)
        if manager is None:
            reason = "swarm mode needs a reachable swarm manager, and no host is one now"
            return _pending(spec, stored, reason), False
        driver = self.hosts.driver_for(manager)
        try:
            nodes = await self.hosts.call(driver.swarm_nodes)
            existing = {
                s.service: s
                for s in await self.hosts.call(driver.swarm_services, owned_labels(name))
            }
        except CorralError as exc:
            return _pending(spec, stored, f"swarm manager {manager.name}: {exc.message}"), False
        candidates = node_candidates(hosts)
        drivers = {h.name: self.hosts.driver_for(h) for h in hosts if h.reachable and h.facts}
        for svc, stray in sorted(existing.items()):
            if svc not in spec.services:
                await self._remove_service(name, driver, stray, "no longer declared")
        networks, volumes = engine_names(name, spec)
        await self._ensure_networks(name, spec, driver, networks)
        problems: dict[str, str] = {}
        changed: dict[str, tuple[str, int | tuple[str, ...]]] = {}  # -> (swarm ID, wanted)
        for wave in spec.waves():  # depends_on only orders the creations in swarm mode
            for svc in wave:
                service = spec.services[svc]
                choice = choose_nodes(service, nodes, candidates)
                if not choice.allowed:
                    problems[svc] = f"no swarm node meets {service.constraint_text or 'it'}"
                    continue
                replicas = 0 if svc in stored.stopped else service.replicas
                current = existing.get(svc)
                if service.global_mode and svc in stored.stopped:
                    if current is not None:  # a global service has no count to set to 0
                        await self._remove_service(name, driver, current, "stopped by request")
                    continue
                plan = plan_service(name, service, networks, volumes, choice, replicas)
                scaled = hand_made_scale(current, plan) if current is not None else ""
                if current is not None and current.spec_hash == plan.spec_hash and not scaled:
                    continue
                if current is not None and await self._rolled_back(name, current, plan):
                    continue
                try:
                    hosts_of = [candidates[n].name for n in choice.allowed if n in candidates]
                    if replicas:
                        await self._supply_images(drivers, hosts_of, service, name)
                    made = await self._apply(name, driver, plan, current, scaled)
                    changed[svc] = (made, choice.allowed if service.global_mode else replicas)
                except CorralError as exc:
                    problems[svc] = exc.message
                    await self.bus.emit(
                        "stack.service.failed",
                        f"stack/{name}/{svc}",
                        f"{plan.name}: {exc.message}",
                        {"service": plan.name},
                    )
        if changed:
            await self._settle(driver, changed)
        return await self._observe(name, stored, spec, driver, drivers, nodes, hosts, problems)

    async def _apply(
        self,
        name: str,
        driver: HostDriver,
        plan: ServicePlan,
        current: SwarmService | None,
        scaled: str,
    ) -> str:
        """Create or update one service (`scaled`: how it was scaled by hand, to undo);
        return its ID."""
        svc = plan.labels[SERVICE]
        resource = f"stack/{name}/{svc}"
        replicated = plan.mode.get("Replicated")
        replicas = replicated["Replicas"] if replicated else "global"
        data = {"service": plan.name, "spec_hash": plan.spec_hash, "replicas": replicas}
        if current is None:
            made = await self.hosts.call(driver.create_service, plan)
            self._attempted[(name, svc)] = plan.spec_hash
            self._tasks[(name, svc)] = {}  # every task of a new service is news
            count = f"{replicas} replicas" if replicated else "a task on each allowed node"
            await self.bus.emit(
                "stack.service.created",
                resource,
                f"swarm service {plan.name} created ({count})",
                data,
            )
            return made
        await self.hosts.call(driver.update_service, current.id, current.version, plan)
        self._attempted[(name, svc)] = plan.spec_hash
        if scaled:
            kind = "stack.service.rescaled"
            message = f"swarm service {plan.name} was {scaled}: set back to {replicas}"
            data["found"] = current.replicas
        else:
            kind = "stack.service.changed"
            message = f"swarm service {plan.name}: spec changed, swarm rolls it out"
            data["previous_hash"] = current.spec_hash
        await self.bus.emit(kind, resource, message, data)
        return current.id

    async def _observe(
        self,
        name: str,
        stored: StoredStack,
        spec: StackSpec,
        driver: HostDriver,
        drivers: Mapping[str, HostDriver],
        nodes: list[SwarmNode],
        hosts: list[HostView],
        problems: Mapping[str, str],
    ) -> tuple[list[SlotState], bool]:
        services = {
            s.service: s for s in await self.hosts.call(driver.swarm_services, owned_labels(name))
        }
        health = await self._containers(name, drivers)
        candidates = node_candidates(hosts)
        node_hosts = {node: c.name for node, c in candidates.items()}
        by_id = {n.id: n for n in nodes}
        states: list[SlotState] = []
        busy = False
        for svc, service in sorted(spec.services.items()):
            current = services.get(svc)
            allowed = (
                choose_nodes(service, nodes, candidates).allowed if service.global_mode else ()
            )
            count = len(allowed) if service.global_mode else service.replicas
            if svc in stored.stopped:
                states += [SlotState(svc, r, "", "", "stopped") for r in range(1, count + 1)]
                continue
            if current is None:
                reason = problems.get(svc, "swarm service not created yet")
                states += [
                    SlotState(svc, r, "", "", "pending", reason=reason)
                    for r in range(1, max(count, 1) + 1)
                ]
                continue
            await self._report_update(name, current)
            busy = busy or current.update_state in IN_FLUX_STATES
            note = problems.get(svc, "") or _service_note(current)
            tasks = await self.hosts.call(driver.swarm_tasks, current.id)
            if service.global_mode:
                slots = node_slots(allowed, tasks, node_hosts, health, by_id)
            else:
                slots = task_slots(service.replicas, tasks, node_hosts, health, by_id)
            await self._report_tasks(name, svc, slots)
            for slot in slots:
                busy = busy or slot.state == "pending"
                states.append(
                    SlotState(
                        svc,
                        slot.replica,
                        slot.host,
                        slot.container_id,
                        slot.state,
                        slot.health,
                        slot.reason or note,
                        slot.exit_code,
                    )
                )
        return states, busy

    async def _containers(self, name: str, drivers: Mapping[str, HostDriver]) -> dict[str, str]:
        """Health of the stack's task containers by ID, from every reachable engine; also
        removes containers that container mode left for this stack (after a mode change)."""
        health: dict[str, str] = {}
        for host, engine in sorted(drivers.items()):
            try:
                found = await self.hosts.call(engine.containers, {STACK: name})
                for c in found:
                    if c.labels.get(OWNED) != "true":
                        health[c.id] = c.health
                        continue
                    await self.hosts.call(engine.remove, c.id)
                    await self.bus.emit(
                        "container.removed",
                        f"stack/{name}/{c.service or '?'}",
                        f"{c.name} on {host} removed: the stack runs in swarm mode now",
                        {"container": c.name, "host": host},
                    )
            except CorralError as exc:
                log.info("swarm: containers not read", host=host, error=exc.message)
        return health

    async def _report_tasks(self, name: str, svc: str, slots: list[TaskSlot]) -> None:
        """Task events in container mode's words: a replica's task running (where, in which
        container) or ended. The first look at a service this process did not create only
        records what is there: it is not news."""
        before = self._tasks.get((name, svc))
        self._tasks[(name, svc)] = seen_tasks(slots)
        if before is None:
            return
        events: list[tuple[str, str, str, dict[str, Any] | None]] = []
        for slot in task_news(before, slots):
            task = f"{service_name(name, svc)}.{slot.replica}"
            where = slot.host or "a swarm node that is no corral host"
            data = {
                "replica": slot.replica,
                "host": slot.host,
                "container_id": slot.container_id,
                "task_state": slot.state,
            }
            if slot.state == "running":
                kind = "container.started"
                text = f"task {task} running on {where} (container {slot.container_id[:12]})"
            else:
                kind = "container.died"
                text = f"task {task} on {where} {slot.state} (exit code {slot.exit_code})" + (
                    f": {slot.reason}" if slot.reason else ""
                )
                data["exit_code"] = slot.exit_code
            events.append((kind, f"stack/{name}/{svc}", text, data))
        if events:
            await self.bus.emit_many(events)

    async def _settle(
        self, driver: HostDriver, changed: Mapping[str, tuple[str, int | tuple[str, ...]]]
    ) -> None:
        """Give new tasks a moment to run, so that an apply's answer shows them."""
        deadline = time.monotonic() + SETTLE_SECONDS
        waiting = dict(changed)
        while waiting and time.monotonic() < deadline:
            for svc, (service_id, replicas) in list(waiting.items()):
                with contextlib.suppress(CorralError):
                    tasks = await self.hosts.call(driver.swarm_tasks, service_id)
                    if settled(replicas, tasks):
                        del waiting[svc]
            if waiting:
                await asyncio.sleep(0.5)

    async def _supply_images(
        self, drivers: Mapping[str, HostDriver], hosts: list[str], spec: ServiceSpec, stack: str
    ) -> None:
        """The image on every reachable host the service may run on (built or copied, as in
        container mode); an error only when no such host can have it."""
        targets = [h for h in hosts if h in drivers]
        resource = f"stack/{stack}/{spec.name}"
        done = await asyncio.gather(
            *(self.images.ensure(dict(drivers), h, spec, resource) for h in targets),
            return_exceptions=True,
        )
        errors = [e for e in done if isinstance(e, BaseException)]
        for error in errors:
            if not isinstance(error, CorralError):
                raise error
        if targets and len(errors) == len(targets):
            raise errors[0]

    async def _ensure_networks(
        self, name: str, spec: StackSpec, driver: HostDriver, networks: Mapping[str, str]
    ) -> None:
        """An attachable overlay for each network the services use (external ones exist)."""
        used = sorted({net for svc in spec.services.values() for net in svc.networks})
        labels = {**owned_labels(name), CREATED: str(int(time.time()))}
        for net in used:
            declared = spec.networks.get(net, NetworkSpec(net))
            if declared.external:
                continue
            try:
                await self.hosts.call(
                    driver.ensure_network, networks[net], "overlay", True, declared.subnet, labels
                )
            except CorralError as exc:
                await self.bus.emit(
                    "network.failed", f"stack/{name}", f"network {net}: {exc.message}"
                )

    # ------------------------------------------------------------------ rollbacks, events
    async def _attempted_hash(self, name: str, svc: str) -> str:
        """The spec hash corral last sent for the service (remembered, else from events)."""
        key = (name, svc)
        if key not in self._attempted:
            found = await self._newest(
                name, svc, ("stack.service.created", "stack.service.changed")
            )
            self._attempted[key] = str(found.get("spec_hash", "")) if found else ""
        return self._attempted[key]

    async def _rolled_back(self, name: str, current: SwarmService, plan: ServicePlan) -> bool:
        """Whether swarm rolled this very spec back: then corral does not send it again
        (until the file changes), or it would update and roll back for ever."""
        if current.update_state not in ROLLBACK_STATES:
            return False
        return await self._attempted_hash(name, current.service) == plan.spec_hash

    async def _report_update(self, name: str, current: SwarmService) -> None:
        """Raise one event per UpdateStatus transition that corral sees."""
        key = (name, current.service)
        if not current.update_key:
            return
        if key not in self._reported:
            found = await self._newest(name, current.service, tuple(UPDATE_EVENTS.values()))
            self._reported[key] = str(found.get("update_key", "")) if found else ""
        if self._reported[key] == current.update_key:
            return
        self._reported[key] = current.update_key
        kind = UPDATE_EVENTS.get(current.update_state)
        if kind is None:
            return
        words = _UPDATE_WORDS[current.update_state]
        message = f"swarm service {current.name} {words}"
        if current.update_message:
            message += f": {current.update_message}"
        data: dict[str, Any] = {
            "service": current.name,
            "update_state": current.update_state,
            "update_key": current.update_key,
            "spec_hash": current.spec_hash,
        }
        if current.update_state in ROLLBACK_STATES:
            data["rolled_back_from"] = await self._attempted_hash(name, current.service)
        await self.bus.emit(kind, f"stack/{name}/{current.service}", message, data)

    async def _newest(self, name: str, svc: str, kinds: tuple[str, ...]) -> dict[str, Any]:
        """The data of the newest event of one of `kinds` about the service ({} if none)."""
        where = EventFilter(kind="stack.service.*", resource=f"stack/{name}/{svc}")
        for event in await self.bus.query(where, limit=100, newest_first=True):
            if event.kind in kinds:
                return dict(event.data)
        return {}

    # ------------------------------------------------------------------ removal
    async def release(self, name: str) -> int:
        """Remove the stack's swarm services and wait until their containers are gone (so that
        the overlays can go next); returns how many task containers ran. Idempotent; refused
        (Unreachable) while no manager is reachable, so that no service is left behind.

        Services are only ever removed by name of a stack corral holds: corral never sweeps a
        swarm for services of stacks it does not know, since another corral may share it."""
        hosts = await self.hosts.views()
        manager = manager_of(hosts)
        if manager is None:
            raise _no_manager(name)
        driver = self.hosts.driver_for(manager)
        services = await self.hosts.call(driver.swarm_services, owned_labels(name))
        running = 0
        for service in services:
            tasks = await self.hosts.call(driver.swarm_tasks, service.id)
            running += sum(1 for t in tasks if t.state == "running")
            await self._remove_service(name, driver, service, "stack removed")
            self._attempted.pop((name, service.service), None)
            self._reported.pop((name, service.service), None)
            self._tasks.pop((name, service.service), None)
        if services:
            await self._wait_gone(name, hosts)
        return running

    async def check_can_leave(self, name: str) -> None:
        """Unreachable unless a manager is reachable (to leave swarm mode, say)."""
        if manager_of(await self.hosts.views()) is None:
            raise _no_manager(name)

    async def _remove_service(
        self, name: str, driver: HostDriver, service: SwarmService, why: str
    ) -> None:
        await self.hosts.call(driver.remove_service, service.id)
        await self.bus.emit(
            "stack.service.removed",
            f"stack/{name}/{service.service or '?'}",
            f"swarm service {service.name} removed: {why}",
            {"service": service.name},
        )

    async def _wait_gone(self, name: str, hosts: list[HostView]) -> None:
        deadline = time.monotonic() + GONE_SECONDS
        for host in hosts:
            if not host.reachable:
                continue
            engine = self.hosts.driver_for(host)
            while time.monotonic() < deadline:
                try:
                    found = await self.hosts.call(engine.containers, {STACK: name})
                except CorralError:
                    break
                if not [c for c in found if c.labels.get(OWNED) != "true"]:
                    break
                await asyncio.sleep(0.5)


def _service_note(current: SwarmService) -> str:
    """What a slot's reason says about its service's rolling update, if anything."""
    state, message = current.update_state, current.update_message
    if state in ROLLBACK_STATES:
        return f"update rolled back: {message}" if message else "update rolled back"
    if state == "paused":
        return f"update paused: {message}" if message else "update paused"
    if state == "updating":
        return "rolling update under way"
    return ""


def _no_manager(stack: str) -> Unreachable:
    return Unreachable(
        f"stack {stack} runs in swarm mode and no swarm manager is reachable to remove its "
        "services; try again when one is",
        {"stack": stack},
    )


def _pending(spec: StackSpec, stored: StoredStack, reason: str) -> list[SlotState]:
    return [
        SlotState(svc, r, "", "", "stopped" if svc in stored.stopped else "pending", reason=reason)
        for svc, service in sorted(spec.services.items())
        for r in range(1, service.replicas + 1)
    ]
