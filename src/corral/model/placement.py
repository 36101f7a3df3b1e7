"""Which host runs what: each replica of a stack's services (constraints, stickiness and
spreading), and a whole session (constraints and a resource fit).

Pure logic, called by the stack reconciler with the hosts it knows and the placements it
made before (a replica stays where it is while its host still matches), and by the session
service with what each host has free; `candidate` and `session_candidate` make a registered
host (its view) into what each of them places on, swarm nodes included.
"""

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from corral.model.stack_spec import Constraint, StackSpec
from corral.model.views import HostView

Slot = tuple[str, int]  # (service, replica), replica counted from 1


@dataclass(frozen=True)
class HostCandidate:
    name: str
    reachable: bool
    role: str = "none"  # swarm role: manager, worker, none
    labels: Mapping[str, str] = field(default_factory=dict)
    engine_labels: Mapping[str, str] = field(default_factory=dict)
    load: int = 0  # corral containers already placed there by other stacks
    hostname: str = ""  # the engine's host name, when `node.hostname` means it (sessions)
    cpus: float = 0.0  # the engine's CPUs and memory, and what sessions hold of them
    memory: int = 0
    held_cpus: float = 0.0
    held_memory: int = 0
    sessions: int = 0

    def meets(self, constraints: Iterable[Constraint]) -> bool:
        return all(
            c.matches(self.hostname or self.name, self.role, self.labels, self.engine_labels)
            for c in constraints
        )


def candidate(host: HostView, load: int = 0) -> HostCandidate:
    """A host as stack placement sees it (and swarm mode, a node's host): `node.hostname`
    is corral's name for it; `load` is what other stacks placed there."""
    facts = host.facts
    return HostCandidate(
        name=host.name,
        reachable=bool(host.reachable),
        role=facts.swarm_role if facts else "none",
        labels=host.labels,
        engine_labels=facts.engine_labels if facts else {},
        load=load,
    )


def session_candidate(host: HostView, held: tuple[float, int, int]) -> HostCandidate:
    """A host as session placement sees it: usable only with facts from a good check,
    `node.hostname` is the engine's host name, with its CPUs and memory and what sessions
    hold of them (`held`: CPUs, memory, sessions)."""
    facts = host.facts
    held_cpus, held_memory, count = held
    return replace(
        candidate(host),
        reachable=bool(host.reachable) and facts is not None,
        hostname=facts.hostname if facts else "",
        cpus=facts.cpus if facts else 0.0,
        memory=facts.memory_bytes if facts else 0,
        held_cpus=held_cpus,
        held_memory=held_memory,
        sessions=count,
    )


@dataclass(frozen=True)
class Placement:
    hosts: Mapping[Slot, str]  # placed slots (the host may be unreachable now)
    pending: Mapping[Slot, str]  # slots with no host, and why


def matching_hosts(spec: StackSpec, service: str, hosts: list[HostCandidate]) -> list[str]:
    """Hosts meeting every constraint; `node.hostname` is corral's name for the host."""
    constraints = spec.services[service].constraints
    return [h.name for h in hosts if h.meets(constraints)]


def place(spec: StackSpec, hosts: list[HostCandidate], previous: Mapping[Slot, str]) -> Placement:
    """Keep earlier placements that still match; put new replicas on the least-loaded
    reachable matching host (by name on ties)."""
    by_name = {h.name: h for h in hosts}
    load = Counter({h.name: h.load for h in hosts})
    placed: dict[Slot, str] = {}
    pending: dict[Slot, str] = {}
    slots = [
        (svc, r) for svc in sorted(spec.services) for r in range(1, spec.services[svc].replicas + 1)
    ]
    for slot in slots:
        host = previous.get(slot)
        if host in by_name and host in matching_hosts(spec, slot[0], hosts):
            placed[slot] = host
            load[host] += 1
    for slot in slots:
        if slot in placed:
            continue
        candidates = [n for n in matching_hosts(spec, slot[0], hosts) if by_name[n].reachable]
        if not candidates:
            pending[slot] = "no reachable host meets its placement constraints"
            continue
        best = min(candidates, key=lambda n: (load[n], n))
        placed[slot] = best
        load[best] += 1
    return Placement(placed, pending)


def fit(
    spec: StackSpec, hosts: list[HostCandidate], cpus: float, memory: int, per_host: int
) -> tuple[str | None, str]:
    """The host for a whole session: reachable, meeting every service's constraints, with
    fewer than `per_host` sessions and the CPUs and memory free; the most free CPU wins.
    (None, why not) when no host fits."""
    constraints = [c for svc in spec.services.values() for c in svc.constraints]
    reasons: list[str] = []
    best: tuple[float, str] | None = None
    for host in hosts:
        if not host.reachable:
            reasons.append(f"{host.name} is unreachable")
            continue
        if not host.meets(constraints):
            reasons.append(f"{host.name} does not meet the placement constraints")
            continue
        free_cpus = host.cpus - host.held_cpus
        free_memory = host.memory - host.held_memory
        if host.sessions >= per_host:
            reasons.append(f"{host.name} holds {host.sessions} sessions (sessions_per_host)")
        elif cpus > free_cpus + 1e-9:
            reasons.append(
                f"{host.name} has {max(free_cpus, 0):.2f} of {host.cpus} CPUs free, "
                f"a session needs {cpus:g}"
            )
        elif memory > free_memory:
            reasons.append(
                f"{host.name} has {max(free_memory, 0) >> 20} MiB free, a session needs "
                f"{memory >> 20} MiB"
            )
        elif best is None or free_cpus > best[0]:
            best = (free_cpus, host.name)
    if best is not None:
        return best[1], ""
    return None, "; ".join(reasons) or "no hosts are registered"
