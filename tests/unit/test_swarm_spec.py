"""Swarm mode's pure parts: the `x-corral` mode key and what swarm mode refuses, the compose
service -> swarm service mapping, node choice, and tasks read back as slots.
"""

from collections.abc import Mapping
from typing import Any

import pytest

from corral.model.compose import parse_compose
from corral.model.placement import HostCandidate
from corral.model.stack_spec import Healthcheck, ServiceSpec, UpdatePolicy, service_hash
from corral.model.swarm import (
    NodeChoice,
    SwarmNode,
    SwarmService,
    SwarmTask,
    TaskSlot,
    choose_nodes,
    hand_made_scale,
    node_slots,
    plan_service,
    seen_tasks,
    settled,
    task_news,
    task_slots,
)
from corral.model.yamlfile import FileInvalid


def _problems(text: str) -> list[str]:
    with pytest.raises(FileInvalid) as caught:
        parse_compose(text)
    return [str(p) for p in caught.value.problems]


def _lines(*lines: str) -> str:
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the file


def test_mode_comes_from_x_corral_and_defaults_to_containers() -> None:
    plain = parse_compose(_lines("services:", "  a: {image: x}"))
    assert plain.mode == "containers"
    swarm = parse_compose(_lines("x-corral: {mode: swarm}", "services:", "  a: {image: x}"))
    assert swarm.mode == "swarm"
    forced = parse_compose(_lines("services:", "  a: {image: x}"), mode="swarm")
    assert forced.mode == "swarm"


def test_bad_x_corral_is_refused_with_its_line() -> None:
    assert _problems(_lines("x-corral: {mode: kubernetes}", "services:", "  a: {image: x}")) == [
        "line 1: x-corral.mode: mode 'kubernetes': use containers or swarm"
    ]
    assert _problems(_lines("x-corral:", "  colour: red", "services:", "  a: {image: x}")) == [
        "line 2: x-corral.colour: unknown or unsupported key"
    ]


def test_swarm_mode_refuses_what_a_service_cannot_express_by_key() -> None:
    text = _lines(
        "x-corral: {mode: swarm}",
        "networks:",
        "  local: {driver: bridge}",
        "services:",
        "  a:",
        "    image: x",
        "    privileged: true",
        "    devices: [/dev/ttyUSB0]",
        "    shm_size: 1g",
        "    ports: ['127.0.0.1:8080:80']",
        "    networks: [local]",
        "    depends_on:",
        "      b: {condition: service_healthy}",
        "  b:",
        "    image: x",
        "    network_mode: host",
        "    healthcheck: {test: 'true'}",
    )
    problems = _problems(text)
    assert problems == [
        "line 7: services.a.privileged: not supported in swarm mode: swarm services cannot "
        "run privileged containers",
        "line 8: services.a.devices: not supported in swarm mode: swarm services cannot map "
        "devices",
        "line 9: services.a.shm_size: not supported in swarm mode: swarm services cannot set "
        "the size of /dev/shm",
        "line 10: services.a.ports.0: not supported in swarm mode: a swarm port is published "
        "on every address",
        "line 11: services.a.networks.local: not supported in swarm mode: network 'local' has "
        "driver 'bridge'; swarm services need overlay networks",
        "line 13: services.a.depends_on.b.condition: not supported in swarm mode: swarm "
        "starts services without waiting for service_healthy",
        "line 16: services.b.network_mode: not supported in swarm mode: swarm services attach "
        "to overlay networks; use networks:",
    ]
    # The same file is fine in container mode (bar the mode key).
    parse_compose(text.replace("x-corral: {mode: swarm}", "x-corral: {mode: containers}"))


def test_max_replicas_per_node_is_only_for_swarm_mode() -> None:
    body = ["services:", "  a:", "    image: x", "    deploy:", "      placement:"]
    body += ["        max_replicas_per_node: 2"]
    assert _problems(_lines(*body)) == [
        "line 6: services.a.deploy.placement.max_replicas_per_node: only swarm mode spreads "
        "replicas this way (x-corral: {mode: swarm})"
    ]
    spec = parse_compose(_lines("x-corral: {mode: swarm}", *body))
    assert spec.services["a"].max_replicas_per_node == 2


def test_update_and_rollback_config_are_parsed_and_checked() -> None:
    spec = parse_compose(
        _lines(
            "services:",
            "  a:",
            "    image: x",
            "    deploy:",
            "      update_config:",
            "        parallelism: 2",
            "        delay: 1s",
            "        failure_action: pause",
            "        monitor: 10s",
            "        max_failure_ratio: 0.25",
            "        order: start-first",
            "      rollback_config: {parallelism: 0, monitor: 2s}",
        )
    )
    service = spec.services["a"]
    assert service.update_config == UpdatePolicy(2, 1.0, "pause", 10.0, 0.25, "start-first")
    assert service.update_order == "start-first"
    assert service.rollback_config == UpdatePolicy(0, 0.0, "pause", 2.0, 0.0, "stop-first")
    default = parse_compose(_lines("services:", "  a: {image: x}")).services["a"]
    assert default.update_config.failure_action == "rollback"
    assert default.rollback_config.failure_action == "pause"
    problems = _problems(
        _lines(
            "services:",
            "  a:",
            "    image: x",
            "    deploy:",
            "      update_config: {failure_action: explode, max_failure_ratio: 2, speed: 3}",
            "      rollback_config: {failure_action: rollback}",
        )
    )
    assert problems == [
        "line 5: services.a.deploy.update_config.speed: unknown or unsupported key",
        "line 5: services.a.deploy.update_config.failure_action: failure_action 'explode': "
        "use rollback, pause or continue",
        "line 5: services.a.deploy.update_config.max_failure_ratio: must be between 0 and 1, not 2",
        "line 6: services.a.deploy.rollback_config.failure_action: a rollback cannot roll "
        "back; use pause or continue",
    ]


def test_swarm_only_settings_never_replace_container_mode_containers() -> None:
    plain = ServiceSpec(name="a", image="x", line=1)
    tuned = ServiceSpec(
        name="a",
        image="x",
        line=1,
        update_config=UpdatePolicy(parallelism=3),
        max_replicas_per_node=2,
        restart_delay_s=1.0,
    )
    assert service_hash(plain) == service_hash(tuned)


# ---------------------------------------------------------------- service plans

NODES = [
    SwarmNode("n-edge", "box", "manager"),
    SwarmNode("n-robot", "box", "worker"),
    SwarmNode("n-other", "stranger", "worker"),
]
HOSTS = {
    "n-edge": HostCandidate("edge", True, "manager", {"role": "edge"}),
    "n-robot": HostCandidate("robot", True, "worker", {"role": "robot"}),
}


def _service(*lines: str) -> ServiceSpec:
    text = _lines("x-corral: {mode: swarm}", "services:", "  a:", *(f"    {x}" for x in lines))
    return parse_compose(text, stack="demo").services["a"]


def _plan(service: ServiceSpec, replicas: int = 1) -> Any:
    choice = choose_nodes(service, NODES, HOSTS)
    return plan_service("demo", service, {"default": "demo_default"}, {}, choice, replicas)


def test_a_full_service_maps_to_a_swarm_spec() -> None:
    service = _service(
        "image: local/busybox:1",
        "entrypoint: [sh, -c]",
        "command: 'echo hi'",
        "environment: {B: '2', A: '1'}",
        "labels: {team: a}",
        "hostname: box",
        "user: '1000'",
        "working_dir: /w",
        "init: true",
        "cap_add: [NET_ADMIN]",
        "extra_hosts: ['printer:10.0.0.5']",
        "stop_grace_period: 2s",
        "ports: ['8080:80', '9090/udp']",
        "volumes: ['/data:/data:ro', '/scratch']",
        "healthcheck: {test: [CMD, 'true'], interval: 2s, timeout: 1s, retries: 2}",
        "restart: on-failure:3",
        "deploy:",
        "  replicas: 3",
        "  resources: {limits: {cpus: '0.5', memory: 64m}}",
        "  restart_policy: {condition: on-failure, max_attempts: 3, delay: 2s}",
        "  placement: {max_replicas_per_node: 2}",
        "  update_config: {parallelism: 1, monitor: 5s, order: start-first}",
    )
    plan = _plan(service, replicas=3)
    assert plan.name == "demo_a"
    assert plan.labels == {
        "corral.stack": "demo",
        "corral.service": "a",
        "corral.owned": "true",
        "corral.spec-hash": plan.spec_hash,
    }
    container = plan.task_template["ContainerSpec"]
    assert container == {
        "Image": "local/busybox:1",
        "Labels": {"team": "a", "corral.stack": "demo", "corral.service": "a"},
        "Env": ["A=1", "B=2"],
        "StopGracePeriod": 2_000_000_000,
        "Command": ["sh", "-c"],
        "Args": ["echo", "hi"],
        "Hostname": "box",
        "Dir": "/w",
        "User": "1000",
        "Init": True,
        "Mounts": [
            {"Type": "bind", "Target": "/data", "ReadOnly": True, "Source": "/data"},
            {"Type": "volume", "Target": "/scratch"},
        ],
        "CapabilityAdd": ["NET_ADMIN"],
        "Hosts": ["10.0.0.5 printer"],
        "HealthCheck": {
            "Test": ["CMD", "true"],
            "Interval": 2_000_000_000,
            "Timeout": 1_000_000_000,
            "Retries": 2,
            "StartPeriod": 0,
        },
    }
    assert plan.task_template["RestartPolicy"] == {
        "Condition": "on-failure",
        "MaxAttempts": 3,
        "Delay": 2_000_000_000,
    }
    assert plan.task_template["Resources"] == {
        "Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20}
    }
    # Not on the stranger's node: only nodes that are corral hosts.
    assert plan.task_template["Placement"] == {
        "Constraints": ["node.id!=n-other"],
        "MaxReplicas": 2,
    }
    assert plan.task_template["Networks"] == [{"Target": "demo_default"}]
    assert plan.mode == {"Replicated": {"Replicas": 3}}
    assert plan.update_config == {
        "Parallelism": 1,
        "Delay": 0,
        "FailureAction": "rollback",
        "Monitor": 5_000_000_000,
        "MaxFailureRatio": 0.0,
        "Order": "start-first",
    }
    assert plan.rollback_config["FailureAction"] == "pause"
    assert plan.endpoint_spec == {
        "Mode": "vip",
        "Ports": [
            {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "ingress", "PublishedPort": 8080},
            {"Protocol": "udp", "TargetPort": 9090, "PublishMode": "ingress"},
        ],
    }


def test_restart_maps_to_swarm_conditions() -> None:
    def condition(*lines: str) -> Mapping[str, Any]:
        policy: Mapping[str, Any] = _plan(_service("image: x", *lines)).task_template[
            "RestartPolicy"
        ]
        return policy

    assert condition() == {"Condition": "none"}
    assert condition("restart: always") == {"Condition": "any"}
    assert condition("restart: unless-stopped") == {"Condition": "any"}
    assert condition("deploy: {restart_policy: {condition: any}}") == {"Condition": "any"}


def test_the_hash_follows_the_spec() -> None:
    base = _plan(_service("image: x"))
    assert _plan(_service("image: x")).spec_hash == base.spec_hash
    assert _plan(_service("image: y")).spec_hash != base.spec_hash
    assert _plan(_service("image: x"), replicas=0).spec_hash != base.spec_hash
    assert _plan(_service("image: x", "healthcheck: {test: 'false'}")).spec_hash != base.spec_hash


def test_constraints_are_corral_facts_pinned_by_node_id() -> None:
    def chosen(*constraints: str) -> NodeChoice:
        lines = ["image: x", "deploy:", "  placement:", "    constraints:"]
        lines += [f"      - {c}" for c in constraints]
        return choose_nodes(_service(*lines), NODES, HOSTS)

    assert chosen("node.labels.role == robot") == NodeChoice(("n-robot",), ("node.id==n-robot",))
    assert chosen("node.hostname == edge") == NodeChoice(("n-edge",), ("node.id==n-edge",))
    assert chosen("node.role == manager").allowed == ("n-edge",)
    assert chosen("node.labels.role != moon") == NodeChoice(
        ("n-edge", "n-robot"), ("node.id!=n-other",)
    )
    assert chosen("node.labels.role == moon") == NodeChoice(
        (), ("node.id!=n-edge", "node.id!=n-other", "node.id!=n-robot")
    )
    # Every node a corral host and no constraint: nothing to pin.
    only_ours = [n for n in NODES if n.id in HOSTS]
    assert choose_nodes(_service("image: x"), only_ours, HOSTS) == NodeChoice(
        ("n-edge", "n-robot"), ()
    )


def test_healthcheck_none_disables_the_images_check() -> None:
    plan = _plan(_service("image: x", "healthcheck: {disable: true}"))
    assert plan.task_template["ContainerSpec"]["HealthCheck"]["Test"] == ["NONE"]
    assert Healthcheck(("NONE",)).test == ("NONE",)


# ---------------------------------------------------------------- tasks as slots


def _task(slot: int, state: str, desired: str = "running", **more: Any) -> SwarmTask:
    values: dict[str, Any] = {
        "id": f"t{slot}-{state}",
        "slot": slot,
        "node_id": "n-edge",
        "desired_state": desired,
        "state": state,
        "container_id": f"c{slot}{state}",
        "updated_at": "2024-01-01T00:00:01Z",
    }
    values.update(more)
    return SwarmTask(**values)


def test_tasks_become_slots_with_host_state_and_reason() -> None:
    tasks = [
        _task(1, "running", node_id="n-robot"),
        _task(1, "failed", "shutdown", error="task: non-zero exit (1)", updated_at="2024"),
        _task(2, "preparing", message="preparing"),
        _task(3, "rejected", error="No such image: x", exit_code=0),
        _task(4, "running", node_id="n-other"),
    ]
    slots = task_slots(
        5,
        tasks,
        {"n-edge": "edge", "n-robot": "robot"},
        {"c1running": "healthy"},
        {n.id: n for n in NODES},
    )
    assert [(s.replica, s.host, s.state, s.health, s.reason) for s in slots] == [
        (1, "robot", "running", "healthy", ""),
        (2, "edge", "pending", "", "preparing"),
        (3, "edge", "failed", "", "No such image: x"),
        (4, "", "running", "", "on swarm node stranger, which is no corral host"),
        (5, "", "pending", "", "no task yet"),
    ]
    assert slots[0].container_id == "c1running"


def test_the_newest_task_meant_to_run_speaks_for_its_slot() -> None:
    old = _task(1, "running", "shutdown", updated_at="2024-01-01T00:00:05Z")
    new = _task(1, "starting", "running", updated_at="2024-01-01T00:00:04Z")
    assert task_slots(1, [old, new], {"n-edge": "edge"}, {})[0].state == "pending"
    assert not settled(1, [old, new])
    done = _task(1, "running", "running", updated_at="2024-01-01T00:00:06Z")
    assert settled(1, [old, new, done])
    assert settled(0, [])


def test_task_news_are_new_containers_running_and_ends_not_yet_seen() -> None:
    before = seen_tasks([TaskSlot(1, "edge", "c1", "running"), TaskSlot(2, "robot", "", "pending")])
    now = [
        TaskSlot(1, "edge", "c1", "running"),  # as before: no news
        TaskSlot(2, "robot", "c2", "running"),  # started
        TaskSlot(3, "edge", "", "pending"),  # pending is never news
    ]
    assert [s.replica for s in task_news(before, now)] == [2]
    later = [
        TaskSlot(1, "edge", "c1", "failed", exit_code=1),  # ended
        TaskSlot(2, "robot", "c3", "running"),  # replaced by a new container
    ]
    assert [s.replica for s in task_news(seen_tasks(now), later)] == [1, 2]
    assert task_news(seen_tasks(later), later) == []


def test_a_global_service_has_a_task_on_each_allowed_node() -> None:
    plan = _plan(_service("image: local/busybox:1", "deploy: {mode: global}"), replicas=0)
    assert plan.mode == {"Global": {}}
    replicated = _plan(_service("image: local/busybox:1"), replicas=1)
    assert plan.spec_hash != replicated.spec_hash
    problems = _problems(
        _lines(
            "x-corral: {mode: swarm}",
            "services:",
            "  a:",
            "    image: x",
            "    deploy: {mode: global, replicas: 2}",
        )
    )
    assert problems == [
        "line 5: services.a.deploy.replicas: replicas cannot be combined with mode: global"
    ]


def test_a_global_services_slots_follow_its_nodes_in_host_order() -> None:
    tasks = [
        _task(0, "running", node_id="n-robot", container_id="c-robot"),
        _task(0, "running", node_id="n-old", container_id="c-old"),  # a node no longer allowed
    ]
    hosts = {"n-edge": "edge", "n-robot": "robot"}
    slots = node_slots(["n-robot", "n-edge"], tasks, hosts, {})
    assert [(s.replica, s.host, s.state, s.container_id) for s in slots] == [
        (1, "edge", "pending", ""),
        (2, "robot", "running", "c-robot"),
    ]
    assert not settled(("n-robot", "n-edge"), tasks)
    assert settled(("n-robot",), tasks)


def test_a_service_scaled_by_hand_is_found_and_only_then() -> None:
    plan = _plan(_service("image: x"), replicas=3)

    def service(replicas: int, spec_hash: str = plan.spec_hash) -> SwarmService:
        labels = {**plan.labels, "corral.spec-hash": spec_hash}
        return SwarmService("id", plan.name, 7, labels, replicas)

    assert hand_made_scale(service(3), plan) == ""
    assert hand_made_scale(service(1), plan) == ("scaled to 1 outside corral; the file says 3")
    # Another spec (an update of corral's, or swarm's rollback to the previous one) is not
    # a hand-made scale: the hashes already differ and the usual update path decides.
    assert hand_made_scale(service(1, "other"), plan) == ""
    global_plan = _plan(_service("image: x", "deploy: {mode: global}"))
    assert hand_made_scale(service(0, global_plan.spec_hash), global_plan) == ""
