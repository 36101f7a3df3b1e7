"""What one container of a stack should be: its name, labels and engine settings.

Built from a ServiceSpec by the stack reconciler (pure, so it is unit-tested); the Docker
driver turns a ContainerPlan into an engine call.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from corral.model.stack_spec import ServiceSpec, StackSpec, service_hash

STACK = "corral.stack"
SERVICE = "corral.service"
REPLICA = "corral.replica"
SPEC_HASH = "corral.spec-hash"
OWNED = "corral.owned"
SESSION = "corral.session"
CREATED = "corral.created"  # network label: when corral made it (epoch seconds)


@dataclass(frozen=True)
class NetworkAttachment:
    name: str  # the engine's network name
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerPlan:
    """Everything the engine needs to create one replica of one service."""

    name: str
    stack: str
    service: str
    replica: int
    spec_hash: str
    spec: ServiceSpec
    labels: Mapping[str, str]
    networks: tuple[NetworkAttachment, ...]
    binds: tuple[str, ...] = ()  # "source:target[:ro]", engine volume names and host paths


@dataclass(frozen=True)
class ContainerInfo:
    """One container an engine reports, as corral reads it."""

    id: str
    name: str
    state: str  # created, running, restarting, exited, paused, dead
    labels: Mapping[str, str]
    exit_code: int = 0
    health: str = ""  # starting, healthy, unhealthy, or "" without a healthcheck

    @property
    def service(self) -> str:
        return self.labels.get(SERVICE, "")

    @property
    def replica(self) -> int:
        try:
            return int(self.labels.get(REPLICA, "0"))
        except ValueError:
            return 0

    @property
    def spec_hash(self) -> str:
        return self.labels.get(SPEC_HASH, "")


@dataclass(frozen=True)
class PublishedPort:
    container_port: int
    protocol: str
    host_ip: str
    host_port: int


@dataclass(frozen=True)
class ContainerDetails:
    """What `inspect` adds to a listing: when it ran, how it ended, where it is published."""

    state: str
    exit_code: int
    started_at: datetime | None
    finished_at: datetime | None
    ports: tuple[PublishedPort, ...] = ()
    health: str = ""
    pid: int = 0  # the main process's, as the engine's machine numbers it (0: not running)


def owned_labels(stack: str) -> dict[str, str]:
    """The labels that select what corral made for a stack (never a look-alike)."""
    return {STACK: stack, OWNED: "true"}


def container_name(stack: str, service: str, replica: int) -> str:
    return f"{stack}-{service}-{replica}"


def network_name(stack: str, network: str) -> str:
    return f"{stack}_{network}"


def volume_name(stack: str, volume: str) -> str:
    return f"{stack}_{volume}"


def plan_container(
    stack: str,
    service: ServiceSpec,
    replica: int,
    networks: Mapping[str, str],
    volumes: Mapping[str, str],
) -> ContainerPlan:
    """The plan for replica `replica` (1-based); `networks`/`volumes` map stack names to
    engine names (external ones keep theirs)."""
    digest = service_hash(service)
    labels = {
        **service.labels,
        STACK: stack,
        SERVICE: service.name,
        REPLICA: str(replica),
        SPEC_HASH: digest,
        OWNED: "true",
    }
    attachments: tuple[NetworkAttachment, ...] = ()
    if service.network_mode is None:
        attachments = tuple(
            NetworkAttachment(networks[net], (service.name, *aliases))
            for net, aliases in sorted(service.networks.items())
        )
    binds = tuple(
        f"{volumes.get(m.source, m.source) if m.kind == 'volume' else m.source}:{m.target}"
        + (":ro" if m.read_only else "")
        for m in service.volumes
        if m.kind in ("volume", "bind") and m.source
    )
    return ContainerPlan(
        name=container_name(stack, service.name, replica),
        stack=stack,
        service=service.name,
        replica=replica,
        spec_hash=digest,
        spec=service,
        labels=labels,
        networks=attachments,
        binds=binds,
    )


def session_network(session: str) -> str:
    return f"ses-{session.lower()}"


def session_container(session: str, service: str) -> str:
    return f"ses-{session.lower()}-{service}"


def plan_session_container(session: str, service: ServiceSpec) -> ContainerPlan:
    """A session's container: on the session's network, known there by its service name."""
    network = session_network(session)
    plan = plan_container(network, service, 1, {n: network for n in service.networks}, {})
    labels = {k: v for k, v in plan.labels.items() if k not in (STACK, REPLICA)}
    labels[SESSION] = session
    return replace(plan, name=session_container(session, service.name), labels=labels)


def engine_names(name: str, spec: StackSpec) -> tuple[dict[str, str], dict[str, str]]:
    """The file's network and volume names -> the engine's names (as in container mode)."""
    networks = {
        n: net.external_name or n if net.external else network_name(name, n)
        for n, net in spec.networks.items()
    }
    networks.setdefault("default", network_name(name, "default"))
    volumes = {
        v: vol.external_name or v if vol.external else volume_name(name, v)
        for v, vol in spec.volumes.items()
    }
    return networks, volumes
