"""Which host runs each replica of each service: constraints, stickiness and spreading.

Pure logic called by the stack reconciler with the hosts it knows and the placements it
made before; a replica stays where it is while its host still matches.
"""

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from corral.model.stack_spec import StackSpec

Slot = tuple[str, int]  # (service, replica), replica counted from 1


@dataclass(frozen=True)
class HostCandidate:
    name: str
    reachable: bool
    role: str = "none"  # swarm role: manager, worker, none
    labels: Mapping[str, str] = field(default_factory=dict)
    engine_labels: Mapping[str, str] = field(default_factory=dict)
    load: int = 0  # corral containers already placed there by other stacks


@dataclass(frozen=True)
class Placement:
    hosts: Mapping[Slot, str]  # placed slots (the host may be unreachable now)
    pending: Mapping[Slot, str]  # slots with no host, and why


def matching_hosts(spec: StackSpec, service: str, hosts: list[HostCandidate]) -> list[str]:
    """Hosts meeting every constraint; `node.hostname` is corral's name for the host."""
    constraints = spec.services[service].constraints
    return [
        h.name
        for h in hosts
        if all(c.matches(h.name, h.role, h.labels, h.engine_labels) for c in constraints)
    ]


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
