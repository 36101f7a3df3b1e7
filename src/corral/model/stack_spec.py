"""What a parsed compose file is: StackSpec, its services, networks and volumes (frozen),
and `service_hash`, which changes exactly when a service's containers must be replaced.

Made by model/compose.py; read by placement, container plans, swarm specs and the services.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

Condition = Literal["service_started", "service_healthy", "service_completed_successfully"]
RestartPolicy = Literal["no", "always", "on-failure", "unless-stopped"]
StackMode = Literal["containers", "swarm"]
FailureAction = Literal["rollback", "pause", "continue"]
UpdateOrder = Literal["stop-first", "start-first"]


@dataclass(frozen=True)
class BuildSpec:
    """How to build a service's image; `context` is absolute."""

    context: str
    dockerfile: str = "Dockerfile"
    args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Healthcheck:
    """Docker's healthcheck: test is ("CMD", ...), ("CMD-SHELL", "...") or ("NONE",)."""

    test: tuple[str, ...]
    interval_s: float = 30.0
    timeout_s: float = 30.0
    retries: int = 3
    start_period_s: float = 0.0


@dataclass(frozen=True)
class PortMapping:
    """One published port; host_port None means Docker picks one."""

    container_port: int
    host_port: int | None = None
    host_ip: str = ""
    protocol: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True)
class VolumeMount:
    """A mount: named or anonymous (source "") volume, absolute bind path, or tmpfs."""

    kind: Literal["volume", "bind", "tmpfs"]
    target: str
    source: str = ""
    read_only: bool = False


@dataclass(frozen=True)
class Dependency:
    """One depends_on entry."""

    service: str
    condition: Condition = "service_started"


CONSTRAINT_FIELDS = ("node.hostname", "node.role", "node.labels.<key>", "engine.labels.<key>")


@dataclass(frozen=True)
class Constraint:
    """A placement constraint such as `node.labels.role == robot`."""

    field: str
    op: Literal["==", "!="]
    value: str

    def matches(
        self,
        hostname: str,
        role: str,
        labels: Mapping[str, str],
        engine_labels: Mapping[str, str],
    ) -> bool:
        """Whether a host with these facts satisfies it; like Swarm, values compare ignoring
        case and a missing label equals nothing (so `!=` matches)."""
        actual: str | None
        if self.field == "node.hostname":
            actual = hostname
        elif self.field == "node.role":
            actual = role
        elif self.field.startswith("node.labels."):
            actual = labels.get(self.field.removeprefix("node.labels."))
        elif self.field.startswith("engine.labels."):
            actual = engine_labels.get(self.field.removeprefix("engine.labels."))
        else:
            actual = None
        equal = actual is not None and actual.casefold() == self.value.casefold()
        return equal if self.op == "==" else not equal


@dataclass(frozen=True)
class UpdatePolicy:
    """`deploy.update_config` or `deploy.rollback_config`: how swarm mode replaces tasks."""

    parallelism: int = 1  # tasks at a time; 0 means all at once
    delay_s: float = 0.0
    failure_action: FailureAction = "rollback"
    monitor_s: float = 5.0
    max_failure_ratio: float = 0.0
    order: UpdateOrder = "stop-first"


ROLLBACK_DEFAULTS = UpdatePolicy(failure_action="pause")


@dataclass(frozen=True)
class ServiceSpec:
    """One service, validated and normalised; `line` is where it starts in the file."""

    name: str
    image: str
    line: int
    build: BuildSpec | None = None
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PortMapping, ...] = ()
    expose: tuple[int, ...] = ()  # container ports (tcp) offered to peers, not published
    volumes: tuple[VolumeMount, ...] = ()
    networks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    network_mode: str | None = None
    depends_on: tuple[Dependency, ...] = ()
    restart: RestartPolicy = "no"
    restart_max: int = 0
    healthcheck: Healthcheck | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    hostname: str | None = None
    privileged: bool = False
    devices: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    group_add: tuple[str, ...] = ()
    shm_size: int | None = None
    runtime: str | None = None
    replicas: int = 1
    cpu_limit: float | None = None
    memory_limit: int | None = None
    cpu_reservation: float | None = None
    memory_reservation: int | None = None
    constraints: tuple[Constraint, ...] = ()
    update_order: str = "stop-first"
    stop_grace_s: float = 10.0
    working_dir: str | None = None
    user: str | None = None
    init: bool = False
    tty: bool = False
    stdin_open: bool = False
    extra_hosts: tuple[str, ...] = ()
    # Read only in swarm mode (x-corral: {mode: swarm}); never part of service_hash.
    update_config: UpdatePolicy = UpdatePolicy()
    rollback_config: UpdatePolicy = ROLLBACK_DEFAULTS
    max_replicas_per_node: int = 0  # 0: no limit
    restart_delay_s: float | None = None  # None: the engine's default
    restart_window_s: float | None = None
    global_mode: bool = False  # deploy.mode: global: one task on each allowed node

    @property
    def constraint_text(self) -> str:
        """Its placement constraints as written, for messages ("" when it has none)."""
        return ", ".join(f"{c.field} {c.op} {c.value}" for c in self.constraints)


@dataclass(frozen=True)
class NetworkSpec:
    """A top-level network; `external_name` is the existing network's name when external."""

    name: str
    driver: str | None = None
    external: bool = False
    attachable: bool = False
    subnet: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    external_name: str | None = None


@dataclass(frozen=True)
class VolumeSpec:
    """A top-level named volume."""

    name: str
    driver: str | None = None
    external: bool = False
    external_name: str | None = None


@dataclass(frozen=True)
class StackSpec:
    """A whole stack file, validated: services, networks and volumes by name."""

    services: Mapping[str, ServiceSpec]
    networks: Mapping[str, NetworkSpec]
    volumes: Mapping[str, VolumeSpec]
    mode: StackMode = "containers"  # from `x-corral: {mode: swarm}`

    def waves(self) -> list[list[str]]:
        """Services in start order: each wave depends only on earlier waves; sorted within."""
        remaining = {
            name: {d.service for d in spec.depends_on if d.service in self.services}
            for name, spec in self.services.items()
        }
        placed: set[str] = set()
        out: list[list[str]] = []
        while remaining:
            ready = sorted(name for name, deps in remaining.items() if deps <= placed)
            if not ready:
                raise ValueError(f"depends_on cycle among {', '.join(sorted(remaining))}")
            out.append(ready)
            placed.update(ready)
            for name in ready:
                del remaining[name]
        return out

    def dependents(self, service: str) -> set[str]:
        """Services that depend on `service`, directly or through others."""
        found: set[str] = set()
        todo = [service]
        while todo:
            current = todo.pop()
            for name, spec in self.services.items():
                if name not in found and any(d.service == current for d in spec.depends_on):
                    found.add(name)
                    todo.append(name)
        found.discard(service)
        return found


# Fields added after stacks were deployed: hashed only when set, so that upgrading corral
# does not replace every running container.
_LATER_FIELDS = ("expose",)
# Fields only swarm mode reads: changing them never replaces a container-mode container.
SWARM_ONLY_FIELDS = (
    "update_config",
    "rollback_config",
    "max_replicas_per_node",
    "restart_delay_s",
    "restart_window_s",
    "global_mode",
)


def service_hash(service: ServiceSpec) -> str:
    """16 hex characters that change exactly when something about the container changes."""
    body = {
        f.name: _canonical(getattr(service, f.name))
        for f in fields(service)
        if f.name not in ("line", "replicas", *SWARM_ONLY_FIELDS)
        and not (f.name in _LATER_FIELDS and not getattr(service, f.name))
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _canonical(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
