"""The protocol every host driver follows: engine facts, containers, networks, images.

Drivers are synchronous (SDKs block); the control layer calls them from threads.
Every method raises `corral.errors.Unreachable` when the engine does not answer, and
`corral.errors.CorralError` subclasses for refusals it understands.
"""

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, TypeVar

from corral.errors import Invalid, NotFound
from corral.model.containers import ContainerDetails, ContainerInfo, ContainerPlan
from corral.model.hosts import EngineFacts
from corral.model.stack_spec import BuildSpec
from corral.model.swarm import ServicePlan, SwarmNode, SwarmService, SwarmTask

T_co = TypeVar("T_co", covariant=True)


class NotSwarmManager(Invalid):
    """The engine refused a swarm-wide operation (an overlay network, a service) because it
    is not a swarm manager: a worker's view of an overlay, say, which its manager removes."""


class SubnetTaken(Invalid):
    """The engine refused a network's subnet because it overlaps one of its own networks
    (made meanwhile by someone else): the caller may pick another block."""


class ImageMissing(NotFound):
    """A container could not be created because its image is not on the engine (removed
    since it was last seen there): the caller may supply it again."""


class EngineStream(Protocol[T_co]):
    """What an engine streams (a container's output, its events) as it comes. close() ends it
    from any thread, with its connection: a reader waiting in next() then stops."""

    def __iter__(self) -> Iterator[T_co]: ...

    def __next__(self) -> T_co: ...

    def close(self) -> None: ...


class HostDriver(Protocol):
    """One connection to one engine."""

    def probe(self) -> EngineFacts: ...

    def containers(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        """All containers (running or not) carrying every given label."""
        ...

    def ensure_network(
        self,
        name: str,
        driver: str,
        attachable: bool,
        subnet: str | None,
        labels: Mapping[str, str],
    ) -> None: ...

    def networks(self, labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
        """Networks carrying every given label, with all their labels."""
        ...

    def remove_network(self, name: str) -> None: ...

    def network_subnets(self) -> dict[str, list[str]]:
        """Every network of the engine with its subnets (IPAM config)."""
        ...

    def ensure_volume(self, name: str, labels: Mapping[str, str]) -> None: ...

    def has_image(self, ref: str) -> bool: ...

    def build_image(self, build: BuildSpec, tag: str) -> None: ...

    def export_image(self, ref: str) -> Iterator[bytes]: ...

    def import_image(self, chunks: Iterator[bytes]) -> None: ...

    def create(self, plan: ContainerPlan, start: bool = True) -> str:
        """Create the container (and start it unless told not to); return its id."""
        ...

    def start(self, container_id: str) -> None: ...

    def details(self, container_id: str) -> ContainerDetails:
        """Times, exit code and published ports of one container."""
        ...

    def listening_ports(self, container_id: str, pid: int = 0) -> set[int]:
        """TCP ports the running container listens on (without connecting to them);
        Invalid when they cannot be seen."""
        ...

    def stop(self, container_id: str, timeout: float) -> None: ...

    def remove(self, container_id: str) -> None: ...

    def logs(
        self, container_id: str, tail: int, follow: bool, since: float | None = None
    ) -> EngineStream[bytes]:
        """Output: the last `tail` lines (-1: all) written after `since` (epoch seconds)."""
        ...

    def events(self, labels: Mapping[str, str]) -> EngineStream[dict[str, Any]]:
        """Container events as they happen, until the connection drops or it is closed."""
        ...

    # Swarm mode: only on an engine that is a swarm manager (else Invalid).
    def swarm_nodes(self) -> list[SwarmNode]: ...

    def swarm_services(self, labels: Mapping[str, str]) -> list[SwarmService]:
        """Services carrying every given label."""
        ...

    def swarm_tasks(self, service_id: str) -> list[SwarmTask]:
        """Every task the swarm keeps for the service (current and recent history)."""
        ...

    def create_service(self, plan: ServicePlan) -> str:
        """Create the service; return its ID."""
        ...

    def update_service(self, service_id: str, version: int, plan: ServicePlan) -> None: ...

    def remove_service(self, service_id: str) -> None: ...

    def close(self) -> None: ...
