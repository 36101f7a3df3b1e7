"""Readiness: when a container counts as ready for what depends on it, and which TCP ports
listen inside it (read from /proc/net/tcp).

Pure. control/readiness.py waits with these judgements for both stacks and sessions; the
Docker driver reads a container's /proc/net/tcp and asks `listening_ports` which ports
listen, a check that takes no connection.
"""

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from corral.model.stack_spec import ServiceSpec, StackSpec

LISTEN = "0A"
STARTED, HEALTHY, COMPLETED = (
    "service_started",
    "service_healthy",
    "service_completed_successfully",
)
ENDED = ("exited", "dead")

Outcome = Literal["ready", "waiting", "failed", "probe"]


class Seen(Protocol):
    """What an engine says of a container: a listing's `ContainerInfo` or an inspect's
    `ContainerDetails` (model/containers.py) both have these."""

    @property
    def state(self) -> str: ...

    @property
    def exit_code(self) -> int: ...

    @property
    def health(self) -> str: ...


@dataclass(frozen=True)
class Verdict:
    """`ready`, `failed` (why), `waiting` (what it is waiting for), or `probe`: read which
    ports listen inside the container and judge again with them."""

    outcome: Outcome
    why: str = ""


READY = Verdict("ready")
PROBE = Verdict("probe")


def dependencies(spec: StackSpec, wave: Iterable[str]) -> list[tuple[str, str]]:
    """(service, condition) pairs the services of a wave wait for, sorted, each once."""
    return sorted(
        {(dep.service, dep.condition) for name in wave for dep in spec.services[name].depends_on}
    )


def ready_ports(svc: ServiceSpec) -> list[int]:
    """The TCP ports a started service must listen on before it counts as ready."""
    return sorted({p.container_port for p in svc.ports if p.protocol == "tcp"} | set(svc.expose))


def has_healthcheck(svc: ServiceSpec) -> bool:
    return svc.healthcheck is not None and svc.healthcheck.test[:1] != ("NONE",)


def judge(
    svc: ServiceSpec, condition: str, seen: Seen, listening: Collection[int] | None = None
) -> Verdict:
    """Whether the container `seen` of `svc` meets `condition` for its dependents.

    service_completed_successfully: it exited with code 0. service_healthy: its healthcheck
    says healthy. service_started: it runs and, when it publishes or exposes TCP ports,
    listens on them (`listening`: PROBE until given), or it already finished with code 0.
    A container that ended any other way, or turned unhealthy, failed."""
    ports = ready_ports(svc)
    check = has_healthcheck(svc)
    if seen.state in ENDED:
        plain = condition == STARTED and not ports and not check
        if (condition == COMPLETED or plain) and seen.exit_code == 0:
            return READY  # it ran (and finished) already
        why = f"{svc.name} exited with code {seen.exit_code} before it was ready"
        return Verdict("failed", why)
    if condition == COMPLETED:
        return Verdict("waiting", "has not completed")
    if check:
        if seen.health == "healthy":
            return READY
        if seen.health == "unhealthy":
            return Verdict("failed", f"{svc.name} is unhealthy")
        return Verdict("waiting", "is not healthy")
    if ports and seen.state == "running":
        if listening is None:
            return PROBE
        missing = [p for p in ports if p not in listening]
        if not missing:
            return READY
        return Verdict("waiting", f"does not listen on port {', '.join(map(str, missing))}")
    if seen.state == "running":
        return READY
    return Verdict("waiting", f"is {seen.state or 'not started'}")


def listening_ports(proc_net_tcp: str) -> set[int]:
    """Local ports in LISTEN state in the text of /proc/net/tcp (and tcp6)."""
    found: set[int] = set()
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] == "sl" or not fields[0].endswith(":"):
            continue
        local, state = fields[1], fields[3]
        _, colon, port = local.rpartition(":")
        if colon and state.upper() == LISTEN:
            try:
                found.add(int(port, 16))
            except ValueError:
                continue
    return found
