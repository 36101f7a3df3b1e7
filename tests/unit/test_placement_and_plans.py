"""Placement (constraints, stickiness, spreading) and container plans, as pure logic.

No engine involved: the reconciler's decisions are checked on their own.
"""

from corral.model.compose import parse_compose
from corral.model.containers import OWNED, SPEC_HASH, STACK, plan_container
from corral.model.placement import HostCandidate, place
from corral.model.stack_spec import service_hash

FILE = """
services:
  master:
    image: local/busybox:1
    deploy:
      placement: {constraints: [node.labels.role == edge]}
  driver:
    image: local/busybox:1
    volumes: [maps:/maps:ro, /dev/shm:/shm]
    networks: {twin: {aliases: [lidar]}}
    deploy:
      replicas: 3
      placement: {constraints: [node.labels.role != edge]}
networks:
  twin: {driver: overlay, attachable: true}
volumes:
  maps: {}
"""

HOSTS = [
    HostCandidate("edge", True, "manager", {"role": "edge"}),
    HostCandidate("robot1", True, "worker", {"role": "robot"}),
    HostCandidate("robot2", True, "worker", {"role": "robot"}),
]


def test_constraints_spread_and_stickiness() -> None:
    spec = parse_compose(FILE, stack="s")
    first = place(spec, HOSTS, {})
    assert first.hosts[("master", 1)] == "edge"
    drivers = [first.hosts[("driver", r)] for r in (1, 2, 3)]
    assert sorted(drivers) == ["robot1", "robot1", "robot2"]
    # A replica stays where it is while its host still matches, even if unreachable now.
    down = [HOSTS[0], HostCandidate("robot1", False, "worker", {"role": "robot"}), HOSTS[2]]
    again = place(spec, down, first.hosts)
    assert again.hosts == first.hosts
    # A new replica never goes to an unreachable host; with none left it is pending.
    only_down = [HOSTS[0], HostCandidate("robot1", False, "worker", {"role": "robot"})]
    fresh = place(spec, only_down, {})
    assert set(fresh.pending) == {("driver", 1), ("driver", 2), ("driver", 3)}
    assert "no reachable host" in fresh.pending[("driver", 1)]


def test_plans_carry_ownership_labels_and_engine_names() -> None:
    spec = parse_compose(FILE, stack="s")
    plan = plan_container("s", spec.services["driver"], 2, {"twin": "s_twin"}, {"maps": "s_maps"})
    assert plan.name == "s-driver-2"
    assert plan.labels[STACK] == "s"
    assert plan.labels[OWNED] == "true"
    assert plan.labels[SPEC_HASH] == service_hash(spec.services["driver"])
    assert [(n.name, n.aliases) for n in plan.networks] == [("s_twin", ("driver", "lidar"))]
    assert plan.binds == ("s_maps:/maps:ro", "/dev/shm:/shm")
