"""Swarm mode for stacks, as pure logic: a ServiceSpec as a Docker swarm service spec, the
nodes a service may run on, and a service's tasks read back as replicas (slots).

Called by the swarm stack reconciler (corral.control.swarm_stacks); the Docker driver sends
the plans and returns the nodes, services and tasks as the dataclasses below.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.model.containers import SERVICE, SPEC_HASH, STACK, owned_labels
from corral.model.placement import HostCandidate
from corral.model.stack_spec import ServiceSpec, UpdatePolicy

# UpdateStatus.State values (swarmkit) and the event corral raises when it sees one.
UPDATE_EVENTS = {
    "updating": "stack.service.updating",
    "completed": "stack.service.updated",
    "paused": "stack.service.update_paused",
    "rollback_started": "stack.service.rolling_back",
    "rollback_completed": "stack.service.rolled_back",
    "rollback_paused": "stack.service.rollback_paused",
}
ROLLBACK_STATES = ("rollback_started", "rollback_paused", "rollback_completed")
IN_FLUX_STATES = ("updating", "rollback_started")
# Task states before a container runs (swarmkit's TaskState, lower case).
_BEFORE_RUNNING = {
    "new",
    "allocated",
    "pending",
    "assigned",
    "accepted",
    "preparing",
    "ready",
    "starting",
}
_TASK_STATES = {
    "running": "running",
    "complete": "exited",
    "failed": "failed",
    "rejected": "failed",
    "shutdown": "stopped",
    "remove": "stopped",
    "orphaned": "pending",
}


@dataclass(frozen=True)
class SwarmNode:
    id: str
    hostname: str
    role: str  # manager or worker


@dataclass(frozen=True)
class SwarmService:
    """One service as the manager reports it."""

    id: str
    name: str
    version: int
    labels: Mapping[str, str]
    replicas: int
    update_state: str = ""  # "" until its first update
    update_message: str = ""
    update_started: str = ""

    @property
    def spec_hash(self) -> str:
        return self.labels.get(SPEC_HASH, "")

    @property
    def service(self) -> str:
        return self.labels.get(SERVICE, "")

    @property
    def update_key(self) -> str:
        """Tells one UpdateStatus transition from the next."""
        if not self.update_state:
            return ""
        return f"{self.update_state}@{self.update_started}"


@dataclass(frozen=True)
class SwarmTask:
    id: str
    slot: int
    node_id: str
    desired_state: str
    state: str
    message: str = ""
    error: str = ""
    container_id: str = ""
    exit_code: int = 0
    updated_at: str = ""  # RFC 3339, comparable as text within one service


@dataclass(frozen=True)
class ServicePlan:
    """What the driver sends to create or update one swarm service."""

    name: str
    labels: Mapping[str, str]
    task_template: Mapping[str, Any]
    mode: Mapping[str, Any]
    update_config: Mapping[str, Any]
    rollback_config: Mapping[str, Any]
    endpoint_spec: Mapping[str, Any]
    spec_hash: str


@dataclass(frozen=True)
class TaskSlot:
    """One replica read from the tasks, in the shape of corral's slots."""

    replica: int
    host: str
    container_id: str
    state: str
    health: str = ""
    reason: str = ""
    exit_code: int = 0


@dataclass(frozen=True)
class NodeChoice:
    """The nodes a service may run on and the swarm constraints that say so."""

    allowed: tuple[str, ...]
    constraints: tuple[str, ...] = field(default=())


def service_name(stack: str, service: str) -> str:
    return f"{stack}_{service}"


def _nanos(seconds: float) -> int:
    return round(seconds * 1_000_000_000)


def choose_nodes(
    spec: ServiceSpec, nodes: Sequence[SwarmNode], hosts: Mapping[str, HostCandidate]
) -> NodeChoice:
    """Evaluate the service's constraints against corral's hosts (`node.hostname` is corral's
    host name, `node.labels.*` its corral labels, as in container mode) and pin the service to
    the matching nodes by node ID. `hosts` maps node ID to the corral host on that node; a
    node that is no corral host is never chosen."""
    allowed = []
    for node in nodes:
        host = hosts.get(node.id)
        if host is None:
            continue
        role = node.role or host.role
        if all(
            c.matches(host.name, role, host.labels, host.engine_labels) for c in spec.constraints
        ):
            allowed.append(node.id)
    excluded = sorted(n.id for n in nodes if n.id not in allowed)
    if not excluded:
        constraints: tuple[str, ...] = ()
    elif len(allowed) == 1:
        constraints = (f"node.id=={allowed[0]}",)
    else:
        constraints = tuple(f"node.id!={node}" for node in excluded)
    return NodeChoice(tuple(sorted(allowed)), constraints)


def _update_config(policy: UpdatePolicy) -> dict[str, Any]:
    return {
        "Parallelism": policy.parallelism,
        "Delay": _nanos(policy.delay_s),
        "FailureAction": policy.failure_action,
        "Monitor": _nanos(policy.monitor_s),
        "MaxFailureRatio": policy.max_failure_ratio,
        "Order": policy.order,
    }


def _restart_policy(spec: ServiceSpec) -> dict[str, Any]:
    condition = {"no": "none", "on-failure": "on-failure"}.get(spec.restart, "any")
    policy: dict[str, Any] = {"Condition": condition}
    if spec.restart == "on-failure" and spec.restart_max:
        policy["MaxAttempts"] = spec.restart_max
    if spec.restart_delay_s is not None:
        policy["Delay"] = _nanos(spec.restart_delay_s)
    if spec.restart_window_s is not None:
        policy["Window"] = _nanos(spec.restart_window_s)
    return policy


def _mounts(stack: str, spec: ServiceSpec, volumes: Mapping[str, str]) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = []
    for mount in spec.volumes:
        entry: dict[str, Any] = {"Type": mount.kind, "Target": mount.target}
        if mount.read_only:
            entry["ReadOnly"] = True
        if mount.kind == "bind":
            entry["Source"] = mount.source
        elif mount.kind == "volume" and mount.source:
            entry["Source"] = volumes.get(mount.source, mount.source)
            entry["VolumeOptions"] = {"Labels": owned_labels(stack)}
        mounts.append(entry)
    return mounts


def _container_spec(stack: str, spec: ServiceSpec, volumes: Mapping[str, str]) -> dict[str, Any]:
    container: dict[str, Any] = {
        "Image": spec.image,
        # Swarm, not corral, makes these containers: they carry the stack and service so
        # that `docker ps` finds them, but not corral.owned (container mode leaves them be).
        "Labels": {**spec.labels, STACK: stack, SERVICE: spec.name},
        "Env": [f"{key}={value}" for key, value in sorted(spec.environment.items())],
        "StopGracePeriod": _nanos(spec.stop_grace_s),
    }
    optional: dict[str, Any] = {
        "Command": list(spec.entrypoint) if spec.entrypoint is not None else None,
        "Args": list(spec.command) if spec.command is not None else None,
        "Hostname": spec.hostname,
        "Dir": spec.working_dir,
        "User": spec.user,
        "Groups": list(spec.group_add) or None,
        "TTY": spec.tty or None,
        "OpenStdin": spec.stdin_open or None,
        "Init": spec.init or None,
        "Mounts": _mounts(stack, spec, volumes) or None,
        "CapabilityAdd": list(spec.cap_add) or None,
        # corral keeps extra hosts as name:address; swarm wants hosts(5) lines.
        "Hosts": [
            f"{address} {name}"
            for name, _, address in (entry.partition(":") for entry in spec.extra_hosts)
        ]
        or None,
    }
    container.update({key: value for key, value in optional.items() if value is not None})
    if spec.healthcheck is not None:
        check = spec.healthcheck
        container["HealthCheck"] = {
            "Test": list(check.test),
            "Interval": _nanos(check.interval_s),
            "Timeout": _nanos(check.timeout_s),
            "Retries": check.retries,
            "StartPeriod": _nanos(check.start_period_s),
        }
    return container


def _resources(spec: ServiceSpec) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    limits = {
        "NanoCPUs": int(spec.cpu_limit * 1e9) if spec.cpu_limit else None,
        "MemoryBytes": spec.memory_limit,
    }
    reservations = {
        "NanoCPUs": int(spec.cpu_reservation * 1e9) if spec.cpu_reservation else None,
        "MemoryBytes": spec.memory_reservation,
    }
    for key, values in (("Limits", limits), ("Reservations", reservations)):
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            resources[key] = given
    return resources


def plan_service(
    stack: str,
    spec: ServiceSpec,
    networks: Mapping[str, str],
    volumes: Mapping[str, str],
    placement: NodeChoice,
    replicas: int,
) -> ServicePlan:
    """The swarm service for one compose service. `networks` and `volumes` map the file's
    names to engine names; `replicas` is the file's count, or 0 while stopped (a global
    service has a task on each node its placement allows, and ignores it)."""
    task_template: dict[str, Any] = {
        "ContainerSpec": _container_spec(stack, spec, volumes),
        "RestartPolicy": _restart_policy(spec),
        "Placement": {"Constraints": list(placement.constraints)},
        "Networks": [
            {"Target": networks.get(net, net), **({"Aliases": list(aliases)} if aliases else {})}
            for net, aliases in sorted(spec.networks.items())
        ],
    }
    if spec.max_replicas_per_node:
        task_template["Placement"]["MaxReplicas"] = spec.max_replicas_per_node
    resources = _resources(spec)
    if resources:
        task_template["Resources"] = resources
    ports = [
        {
            "Protocol": port.protocol,
            "TargetPort": port.container_port,
            "PublishMode": "ingress",
            **({"PublishedPort": port.host_port} if port.host_port else {}),
        }
        for port in spec.ports
    ]
    labels = {**owned_labels(stack), SERVICE: spec.name}
    mode: dict[str, Any] = (
        {"Global": {}} if spec.global_mode else {"Replicated": {"Replicas": replicas}}
    )
    update, rollback = _update_config(spec.update_config), _update_config(spec.rollback_config)
    endpoint = {"Mode": "vip", "Ports": ports}
    name = service_name(stack, spec.name)
    body = [name, labels, task_template, mode, update, rollback, endpoint]
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return ServicePlan(
        name=name,
        labels={**labels, SPEC_HASH: digest},
        task_template=task_template,
        mode=mode,
        update_config=update,
        rollback_config=rollback,
        endpoint_spec=endpoint,
        spec_hash=digest,
    )


def hand_made_scale(current: SwarmService, plan: ServicePlan) -> str:
    """How a service whose spec corral made (the same hash) was scaled by hand, e.g. with
    `docker service scale`: what to say, or "" when its replica count is as planned."""
    wanted = plan.mode.get("Replicated")
    if wanted is None or current.spec_hash != plan.spec_hash:
        return ""
    if current.replicas == wanted["Replicas"]:
        return ""
    return f"scaled to {current.replicas} outside corral; the file says {wanted['Replicas']}"


def _current(tasks: Sequence[SwarmTask]) -> SwarmTask:
    """The task that speaks for a slot: the newest one meant to run, else the newest."""
    meant = [t for t in tasks if t.desired_state in ("running", "ready", "accepted")]
    return max(meant or tasks, key=lambda t: t.updated_at)


def task_slots(
    replicas: int,
    tasks: Sequence[SwarmTask],
    node_hosts: Mapping[str, str],
    health: Mapping[str, str],
    nodes: Mapping[str, SwarmNode] | None = None,
) -> list[TaskSlot]:
    """Slots 1..replicas from a service's tasks: host (corral's name for the task's node),
    container, state in corral's words (pending, running, exited, failed, stopped), reason
    (the task's error or progress) and health (from the container, by ID)."""
    by_slot: dict[int, list[SwarmTask]] = {}
    for task in tasks:
        by_slot.setdefault(task.slot, []).append(task)
    slots = []
    for replica in range(1, replicas + 1):
        found = by_slot.get(replica)
        if not found:
            slots.append(TaskSlot(replica, "", "", "pending", reason="no task yet"))
            continue
        slots.append(_slot(replica, _current(found), node_hosts, health, nodes))
    return slots


def node_slots(
    allowed: Sequence[str],
    tasks: Sequence[SwarmTask],
    node_hosts: Mapping[str, str],
    health: Mapping[str, str],
    nodes: Mapping[str, SwarmNode] | None = None,
) -> list[TaskSlot]:
    """A global service's slots: one per node it may run on (`allowed`, node IDs), numbered
    in the order of corral's host names, from the tasks on that node."""
    by_node: dict[str, list[SwarmTask]] = {}
    for task in tasks:
        by_node.setdefault(task.node_id, []).append(task)
    order = sorted(allowed, key=lambda node: (node_hosts.get(node, "~"), node))
    slots = []
    for replica, node in enumerate(order, start=1):
        found = by_node.get(node)
        if not found:
            host = node_hosts.get(node, "")
            slots.append(TaskSlot(replica, host, "", "pending", reason="no task on its node yet"))
            continue
        slots.append(_slot(replica, _current(found), node_hosts, health, nodes))
    return slots


def _slot(
    replica: int,
    task: SwarmTask,
    node_hosts: Mapping[str, str],
    health: Mapping[str, str],
    nodes: Mapping[str, SwarmNode] | None,
) -> TaskSlot:
    host = node_hosts.get(task.node_id, "")
    reason = ""
    if task.node_id and not host:
        node = (nodes or {}).get(task.node_id)
        where = node.hostname if node is not None else task.node_id[:12]
        reason = f"on swarm node {where}, which is no corral host"
    state = "pending" if task.state in _BEFORE_RUNNING else _TASK_STATES.get(task.state, "")
    if not state:
        state = task.state or "pending"
    if state != "running":
        reason = task.error or task.message or reason
    return TaskSlot(
        replica=replica,
        host=host,
        container_id=task.container_id,
        state=state,
        health=health.get(task.container_id, ""),
        reason=reason,
        exit_code=task.exit_code,
    )


TaskSeen = dict[int, tuple[str, str]]  # replica -> (task container, state)


def seen_tasks(slots: Sequence[TaskSlot]) -> TaskSeen:
    return {s.replica: (s.container_id, s.state) for s in slots}


def task_news(before: TaskSeen, slots: Sequence[TaskSlot]) -> list[TaskSlot]:
    """The slots whose task is news since `before`: running in a container not seen running
    there, or ended (failed, exited) in a state not seen yet. Pending is never news."""
    news = []
    for slot in slots:
        if slot.state not in ("running", "failed", "exited"):
            continue
        if before.get(slot.replica) != (slot.container_id, slot.state):
            news.append(slot)
    return news


def settled(replicas: int | Sequence[str], tasks: Sequence[SwarmTask]) -> bool:
    """Whether every wanted slot has a task that runs or has failed (nothing in between):
    slots 1..replicas, or for a global service one on each of these nodes."""
    if isinstance(replicas, int):
        slots = task_slots(replicas, tasks, {}, {})
    else:
        slots = node_slots(replicas, tasks, {}, {})
    return all(s.state != "pending" for s in slots)
