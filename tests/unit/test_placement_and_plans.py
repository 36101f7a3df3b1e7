"""Placement (constraints, stickiness, spreading) and container plans, as pure logic.

No engine involved: the reconciler's decisions are checked on their own.
"""

from datetime import UTC, datetime

from corral.model.compose import parse_compose
from corral.model.containers import OWNED, SPEC_HASH, STACK, plan_container
from corral.model.hosts import EngineFacts
from corral.model.placement import HostCandidate, candidate, fit, place, session_candidate
from corral.model.stack_spec import service_hash
from corral.model.views import HostView

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


SESSION = """
services:
  echo:
    image: local/busybox:1
    deploy:
      placement: {constraints: [node.hostname != lab-old]}
"""
MIB = 1 << 20


def test_a_session_goes_where_it_fits_with_the_most_free_cpu() -> None:
    spec = parse_compose(SESSION, stack="template-echo")
    hosts = [
        HostCandidate("down", False, cpus=8, memory=8192 * MIB),
        # node.hostname is the engine's host name when it is known
        HostCandidate("lab", True, hostname="lab-old", cpus=8, memory=8192 * MIB),
        HostCandidate("full", True, cpus=4, memory=4096 * MIB, sessions=3),
        HostCandidate("busy", True, cpus=4, memory=4096 * MIB, held_cpus=3.5),
        HostCandidate("small", True, cpus=4, memory=512 * MIB),
        HostCandidate("edge1", True, cpus=2, memory=2048 * MIB),
        HostCandidate("edge2", True, cpus=4, memory=2048 * MIB, held_cpus=1),
    ]
    assert fit(spec, hosts, 1.0, 1024 * MIB, per_host=3) == ("edge2", "")
    host, why = fit(spec, hosts[:5], 1.0, 1024 * MIB, per_host=3)
    assert host is None
    assert why.split("; ") == [
        "down is unreachable",
        "lab does not meet the placement constraints",
        "full holds 3 sessions (sessions_per_host)",
        "busy has 0.50 of 4 CPUs free, a session needs 1",
        "small has 512 MiB free, a session needs 1024 MiB",
    ]
    assert fit(spec, [], 1.0, MIB, per_host=3) == (None, "no hosts are registered")


def _view(reachable: bool | None, facts: bool) -> HostView:
    now = datetime.now(UTC)
    found = EngineFacts(
        "27", "1.47", "linux", "x86_64", 4, 8 << 30, 0, 0, 0, "worker", "n1",
        {"zone": "a"}, "edge-1",
    )  # fmt: skip
    return HostView(
        name="edge",
        url="tcp://10.0.0.1:2375",
        labels={"room": "lab"},
        reachable=reachable,
        state_since=now,
        last_checked=now,
        facts=found if facts else None,
        created_at=now,
        updated_at=now,
    )


def test_stacks_and_sessions_see_a_host_through_one_candidate() -> None:
    stack = candidate(_view(True, True), load=3)
    assert (stack.name, stack.reachable, stack.role, stack.load) == ("edge", True, "worker", 3)
    assert (dict(stack.labels), dict(stack.engine_labels), stack.hostname) == (
        {"room": "lab"},
        {"zone": "a"},
        "",  # node.hostname is corral's name for a stack
    )
    session = session_candidate(_view(True, True), (1.5, 1 << 30, 2))
    assert (session.hostname, session.cpus, session.memory) == ("edge-1", 4, 8 << 30)
    assert (session.held_cpus, session.held_memory, session.sessions) == (1.5, 1 << 30, 2)
    assert session_candidate(_view(True, False), (0.0, 0, 0)).reachable is False
    assert candidate(_view(None, False)).reachable is False
