"""Compose stack files: every accepted form, interpolation, and every error with its line.

Pure parsing plus reading `.env` / env_file files from a temporary directory.
"""

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.model.compose import parse_bytes, parse_compose, parse_duration
from corral.model.stack_spec import (
    BuildSpec,
    Constraint,
    Dependency,
    Healthcheck,
    NetworkSpec,
    PortMapping,
    ServiceSpec,
    StackSpec,
    VolumeMount,
    VolumeSpec,
    service_hash,
)
from corral.model.yamlfile import FileInvalid

ROBOTS = """\
version: "3.8"
name: robots
x-ros-env: &ros-env
  ROS_MASTER_URI: http://ros-master:11311
  ROS_DOMAIN_ID: 7

services:
  ros-master:
    image: ros:${ROS_DISTRO:-noetic}-ros-core
    command: roscore
    environment:
      <<: *ros-env
    networks:
      ros:
        aliases: [master]
    healthcheck:
      test: ["CMD-SHELL", "rostopic list > /dev/null"]
      interval: 5s
      timeout: 2s
      retries: 10
      start_period: 1m30s
    restart: unless-stopped
    deploy:
      placement:
        constraints:
          - node.role == manager
  lidar:
    build:
      context: ./lidar
      args:
        DRIVER_VERSION: 2.10
    network_mode: host
    privileged: true
    devices:
      - /dev/ttyUSB0:/dev/ttyUSB0:rwm
    group_add: [dialout]
    environment:
      - ROS_MASTER_URI=http://localhost:11311
      - SERIAL_PORT=/dev/ttyUSB0
    depends_on:
      ros-master:
        condition: service_healthy
    restart: on-failure:5
    deploy:
      resources:
        limits: {cpus: "1.5", memory: 512m}
        reservations: {cpus: 0.25, memory: 128m}
      placement:
        constraints:
          - node.labels.role==robot
          - node.hostname != edge
  rviz:
    image: osrf/rviz:latest
    ports:
      - "127.0.0.1:8080:80"
      - 9090:9090/udp
      - target: 5900
        published: 5901
    volumes:
      - maps:/maps
      - ./config:/config:ro
      - /tmp/.X11-unix:/tmp/.X11-unix
      - /cache
    networks: [ros]
    depends_on: [ros-master, lidar]
    shm_size: 1g
    deploy:
      replicas: 2
      update_config: {order: start-first, parallelism: 1}
    labels:
      com.example.team: perception
    stop_grace_period: 30s
  recorder:
    image: ros:noetic
    command: ["rosbag", "record", "-a"]
    volumes:
      - type: volume
        source: bags
        target: /bags
      - type: bind
        source: ./out
        target: /out
        read_only: true
      - type: tmpfs
        target: /scratch
    depends_on: [ros-master]

networks:
  ros:
    driver: overlay
    attachable: true
volumes:
  maps:
  bags:
"""


def _read(path: Path) -> str:
    """The caller's file reads, as corral's services do them (control/stacks.py)."""
    return path.read_text(encoding="utf-8")


def _y(*lines: str) -> str:
    """Lines of YAML; the first is line 1, so line numbers in tests are easy to check."""
    return "\n".join(lines) + "\n"


def _problems(
    text: str,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> list[str]:
    with pytest.raises(FileInvalid) as caught:
        parse_compose(text, "compose.yml", env=env, base_dir=base_dir, read=_read)
    assert caught.value.source == "compose.yml"
    return [str(p) for p in caught.value.problems]


def _service(
    *body: str,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    stack: str = "stack",
) -> ServiceSpec:
    """Parse one service `a` whose body lines are given (indented under it)."""
    text = _y("services:", "  a:", *(f"    {line}" for line in body))
    return parse_compose(text, env=env, base_dir=base_dir, stack=stack, read=_read).services["a"]


# ---------------------------------------------------------------- a realistic stack


@pytest.fixture
def robots(tmp_path: Path) -> StackSpec:
    return parse_compose(ROBOTS, "robots.yml", base_dir=tmp_path, stack="robots", read=_read)


def test_robotics_stack_master(robots: StackSpec) -> None:
    master = robots.services["ros-master"]
    assert master.line == 8
    assert master.image == "ros:noetic-ros-core"
    assert master.command == ("roscore",)
    assert master.environment == {
        "ROS_MASTER_URI": "http://ros-master:11311",
        "ROS_DOMAIN_ID": "7",
    }
    assert master.networks == {"ros": ("master",)}
    assert master.healthcheck == Healthcheck(
        ("CMD-SHELL", "rostopic list > /dev/null"), 5.0, 2.0, 10, 90.0
    )
    assert master.restart == "unless-stopped"
    assert master.constraints == (Constraint("node.role", "==", "manager"),)
    assert master.replicas == 1
    assert master.update_order == "stop-first"


def test_robotics_stack_lidar(robots: StackSpec, tmp_path: Path) -> None:
    lidar = robots.services["lidar"]
    assert lidar.image == "robots-lidar:latest"
    assert lidar.build == BuildSpec(
        str(tmp_path / "lidar"), "Dockerfile", {"DRIVER_VERSION": "2.10"}
    )
    assert lidar.network_mode == "host"
    assert lidar.networks == {}
    assert lidar.privileged is True
    assert lidar.devices == ("/dev/ttyUSB0:/dev/ttyUSB0:rwm",)
    assert lidar.group_add == ("dialout",)
    assert lidar.environment == {
        "ROS_MASTER_URI": "http://localhost:11311",
        "SERIAL_PORT": "/dev/ttyUSB0",
    }
    assert lidar.depends_on == (Dependency("ros-master", "service_healthy"),)
    assert (lidar.restart, lidar.restart_max) == ("on-failure", 5)
    assert (lidar.cpu_limit, lidar.memory_limit) == (1.5, 512 << 20)
    assert (lidar.cpu_reservation, lidar.memory_reservation) == (0.25, 128 << 20)
    assert lidar.constraints == (
        Constraint("node.labels.role", "==", "robot"),
        Constraint("node.hostname", "!=", "edge"),
    )


def test_robotics_stack_rviz(robots: StackSpec, tmp_path: Path) -> None:
    rviz = robots.services["rviz"]
    assert rviz.ports == (
        PortMapping(80, 8080, "127.0.0.1", "tcp"),
        PortMapping(9090, 9090, "", "udp"),
        PortMapping(5900, 5901),
    )
    assert rviz.volumes == (
        VolumeMount("volume", "/maps", "maps"),
        VolumeMount("bind", "/config", str(tmp_path / "config"), read_only=True),
        VolumeMount("bind", "/tmp/.X11-unix", "/tmp/.X11-unix"),
        VolumeMount("volume", "/cache"),
    )
    assert rviz.networks == {"ros": ()}
    assert rviz.depends_on == (Dependency("ros-master"), Dependency("lidar"))
    assert rviz.shm_size == 1 << 30
    assert rviz.replicas == 2
    assert rviz.update_order == "start-first"
    assert rviz.labels == {"com.example.team": "perception"}
    assert rviz.stop_grace_s == 30.0
    assert rviz.restart == "no"


def test_robotics_stack_recorder_and_top_level(robots: StackSpec, tmp_path: Path) -> None:
    recorder = robots.services["recorder"]
    assert recorder.command == ("rosbag", "record", "-a")
    assert recorder.volumes == (
        VolumeMount("volume", "/bags", "bags"),
        VolumeMount("bind", "/out", str(tmp_path / "out"), read_only=True),
        VolumeMount("tmpfs", "/scratch"),
    )
    assert recorder.networks == {"default": ()}
    assert robots.networks == {
        "ros": NetworkSpec("ros", driver="overlay", attachable=True),
        "default": NetworkSpec("default"),
    }
    assert robots.volumes == {"maps": VolumeSpec("maps"), "bags": VolumeSpec("bags")}


def test_waves_and_dependents(robots: StackSpec) -> None:
    assert robots.waves() == [["ros-master"], ["lidar", "recorder"], ["rviz"]]
    assert robots.dependents("ros-master") == {"lidar", "rviz", "recorder"}
    assert robots.dependents("lidar") == {"rviz"}
    assert robots.dependents("rviz") == set()


def test_waves_of_independent_services_are_one_sorted_wave() -> None:
    spec = parse_compose(_y("services:", "  b: {image: x}", "  a: {image: x}", "  c: {image: x}"))
    assert spec.waves() == [["a", "b", "c"]]


def test_waves_refuse_a_cycle_built_by_hand() -> None:
    a = ServiceSpec("a", "x", 1, depends_on=(Dependency("b"),))
    b = ServiceSpec("b", "x", 2, depends_on=(Dependency("a"),))
    with pytest.raises(ValueError, match="cycle"):
        StackSpec({"a": a, "b": b}, {}, {}).waves()


def test_default_network_only_when_used() -> None:
    spec = parse_compose(
        _y("services:", "  a: {image: x, network_mode: none}", "networks:", "  n: {}")
    )
    assert spec.networks == {"n": NetworkSpec("n")}
    assert spec.services["a"].networks == {}


def test_default_network_can_be_declared() -> None:
    spec = parse_compose(
        _y("services:", "  a: {image: x}", "networks:", "  default:", "    driver: overlay")
    )
    assert spec.networks == {"default": NetworkSpec("default", driver="overlay")}


# ---------------------------------------------------------------- service forms


def test_build_string_and_default_image(tmp_path: Path) -> None:
    service = _service("build: .", base_dir=tmp_path, stack="demo")
    assert service.build == BuildSpec(str(tmp_path))
    assert service.image == "demo-a:latest"


def test_build_with_image_keeps_the_image(tmp_path: Path) -> None:
    service = _service(
        "image: reg/a:1",
        "build: {context: ../src, dockerfile: docker/Dockerfile.arm, args: [A=1, B]}",
        base_dir=tmp_path,
        env={"B": "from-env"},
    )
    assert service.image == "reg/a:1"
    assert service.build == BuildSpec(
        str(tmp_path.parent / "src"), "docker/Dockerfile.arm", {"A": "1", "B": "from-env"}
    )


def test_command_and_entrypoint_strings_are_split_like_a_shell() -> None:
    service = _service("image: x", "command: sh -c 'echo hi there'", "entrypoint: [tini, --]")
    assert service.command == ("sh", "-c", "echo hi there")
    assert service.entrypoint == ("tini", "--")


def test_environment_forms_and_env_file(tmp_path: Path) -> None:
    (tmp_path / "common.env").write_text(
        "# comment\nexport A=from-file\nB='single #quoted'\nC=\"x\\ny\"\nD=plain # note\nPASS\n"
    )
    service = _service(
        "image: x",
        "env_file: [common.env, {path: missing.env, required: false}]",
        "environment:",
        "  A: overridden",
        "  PORT: 80",
        "  RATE: 1.50",
        "  DEBUG: true",
        "  FLAG: yes",
        "  EMPTY:",
        "  UNSET_PASSED:",
        "  FROM_SHELL:",
        base_dir=tmp_path,
        env={"FROM_SHELL": "shell", "PASS": "passed"},
    )
    assert service.environment == {
        "A": "overridden",
        "B": "single #quoted",
        "C": "x\ny",
        "D": "plain",
        "PASS": "passed",
        "PORT": "80",
        "RATE": "1.50",
        "DEBUG": "true",
        "FLAG": "yes",
        "FROM_SHELL": "shell",
    }


def test_environment_list_with_bare_keys() -> None:
    service = _service("image: x", "environment: [A=1, B=, SET, UNSET, C=a=b]", env={"SET": "s"})
    assert service.environment == {"A": "1", "B": "", "SET": "s", "C": "a=b"}


def test_port_forms() -> None:
    service = _service(
        "image: x",
        "ports:",
        "  - 80",
        "  - '53:53/udp'",
        "  - 127.0.0.1::8080",
        "  - '[::1]:9000:9000'",
        "  - 22:22",
        "  - {target: 443, published: '8443', host_ip: 0.0.0.0, protocol: tcp, mode: host}",
        "  - {target: 1883}",
    )
    assert service.ports == (
        PortMapping(80),
        PortMapping(53, 53, "", "udp"),
        PortMapping(8080, None, "127.0.0.1"),
        PortMapping(9000, 9000, "::1"),
        PortMapping(22, 22),
        PortMapping(443, 8443, "0.0.0.0"),
        PortMapping(1883),
    )


def test_volume_forms_with_declared_volume(tmp_path: Path) -> None:
    text = _y(
        "services:",
        "  a:",
        "    image: x",
        "    volumes:",
        "      - data:/data:ro",
        "      - ../shared:/shared:rw,cached",
        "      - type: volume",
        "        target: /anon",
        "      - {type: bind, source: /srv, target: /srv, bind: {create_host_path: true}}",
        "volumes:",
        "  data: {driver: local}",
        "  ext: {external: true, name: other-stack_data}",
    )
    spec = parse_compose(text, base_dir=tmp_path / "stack", read=_read)
    assert spec.services["a"].volumes == (
        VolumeMount("volume", "/data", "data", read_only=True),
        VolumeMount("bind", "/shared", str(tmp_path / "shared")),
        VolumeMount("volume", "/anon"),
        VolumeMount("bind", "/srv", "/srv"),
    )
    assert spec.volumes == {
        "data": VolumeSpec("data", driver="local"),
        "ext": VolumeSpec("ext", external=True, external_name="other-stack_data"),
    }


def test_networks_declared_forms() -> None:
    text = _y(
        "services:",
        "  a:",
        "    image: x",
        "    networks:",
        "      front:",
        "      back: {aliases: [db, store]}",
        "networks:",
        "  front:",
        "    external: true",
        "    name: shared-front",
        "  back:",
        "    driver: bridge",
        "    ipam: {config: [{subnet: 10.20.0.0/24}]}",
        "    labels: [team=robots]",
        "  legacy:",
        "    external: {name: old-net}",
    )
    spec = parse_compose(text)
    assert spec.services["a"].networks == {"front": (), "back": ("db", "store")}
    assert spec.networks == {
        "front": NetworkSpec("front", external=True, external_name="shared-front"),
        "back": NetworkSpec(
            "back", driver="bridge", subnet="10.20.0.0/24", labels={"team": "robots"}
        ),
        "legacy": NetworkSpec("legacy", external=True, external_name="old-net"),
    }


def test_depends_on_mapping_accepts_required_and_restart() -> None:
    text = _y(
        "services:",
        "  job: {image: x}",
        "  a:",
        "    image: x",
        "    depends_on:",
        "      job: {condition: service_completed_successfully, required: true, restart: false}",
        "      b:",
        "  b: {image: x}",
    )
    spec = parse_compose(text)
    assert spec.services["a"].depends_on == (
        Dependency("job", "service_completed_successfully"),
        Dependency("b"),
    )
    assert spec.waves() == [["b", "job"], ["a"]]


def test_healthcheck_forms() -> None:
    shell = _service("image: x", "healthcheck: {test: curl -f http://localhost/ || exit 1}")
    assert shell.healthcheck == Healthcheck(("CMD-SHELL", "curl -f http://localhost/ || exit 1"))
    exec_form = _service(
        "image: x", "healthcheck: {test: [CMD, pg_isready], interval: 500ms, retries: 0}"
    )
    assert exec_form.healthcheck == Healthcheck(("CMD", "pg_isready"), interval_s=0.5, retries=0)
    disabled = _service("image: x", "healthcheck: {disable: true}")
    assert disabled.healthcheck == Healthcheck(("NONE",))


def test_restart_forms() -> None:
    assert _service("image: x", "restart: no").restart == "no"
    assert _service("image: x", "restart: always").restart == "always"
    policy = _service(
        "image: x",
        "deploy: {restart_policy: {condition: on-failure, max_attempts: 4, delay: 5s}}",
    )
    assert (policy.restart, policy.restart_max) == ("on-failure", 4)
    anything = _service("image: x", "deploy: {restart_policy: {condition: any}}")
    assert anything.restart == "always"
    both = _service("image: x", "restart: 'no'", "deploy: {restart_policy: {condition: any}}")
    assert both.restart == "no"


def test_small_fields() -> None:
    service = _service(
        "image: x",
        "labels: [a=1, 'b=two words', c]",
        "hostname: robot-1",
        "cap_add: [NET_ADMIN, SYS_TIME]",
        "group_add: [dialout, 20]",
        "shm_size: 64m",
        "runtime: nvidia",
        "working_dir: /ws",
        "user: 1000:1000",
        "init: true",
        "tty: true",
        "stdin_open: true",
        "extra_hosts: ['printer:10.0.0.5', 'gw=host-gateway', 'v6:::1']",
        "expose: [9000]",
        "x-notes: anything goes here",
        "deploy: {mode: replicated, labels: {team: a}, rollback_config: {order: stop-first}}",
    )
    assert service.labels == {"a": "1", "b": "two words", "c": ""}
    assert service.hostname == "robot-1"
    assert service.cap_add == ("NET_ADMIN", "SYS_TIME")
    assert service.group_add == ("dialout", "20")
    assert service.shm_size == 64 << 20
    assert service.runtime == "nvidia"
    assert service.working_dir == "/ws"
    assert service.user == "1000:1000"
    assert (service.init, service.tty, service.stdin_open) == (True, True, True)
    assert service.extra_hosts == ("printer:10.0.0.5", "gw:host-gateway", "v6:::1")
    assert service.stop_grace_s == 10.0


def test_extra_hosts_mapping_form() -> None:
    assert _service("image: x", "extra_hosts: {nas: 10.0.0.9}").extra_hosts == ("nas:10.0.0.9",)


def test_merge_keys_explicit_keys_win() -> None:
    text = _y(
        "x-base: &base",
        "  image: base:1",
        "  restart: always",
        "services:",
        "  a:",
        "    <<: *base",
        "    image: mine:2",
    )
    service = parse_compose(text).services["a"]
    assert (service.image, service.restart) == ("mine:2", "always")


# ---------------------------------------------------------------- interpolation


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$A", "a"),
        ("${A}", "a"),
        ("pre-${A}-post", "pre-a-post"),
        ("$A/$B", "a/"),
        ("${UNSET}", ""),
        ("$UNSET", ""),
        ("${UNSET:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${A:-dflt}", "a"),
        ("${UNSET-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${A-dflt}", "a"),
        ("${UNSET:-${A}}", "a"),
        ("${UNSET:-x:y-z}", "x:y-z"),
        ("${A:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${A:?must be set}", "a"),
        ("${EMPTY?only unset fails}", ""),
        ("$$A", "$A"),
        ("cost: $$5 ${A}", "cost: $5 a"),
        ("$${A}", "${A}"),
        ("no dollars", "no dollars"),
    ],
)
def test_interpolation_forms(template: str, expected: str) -> None:
    text = _y("services:", "  a:", "    image: x", "    environment:", "      V: " + repr(template))
    spec = parse_compose(text, env={"A": "a", "EMPTY": ""})
    assert spec.services["a"].environment == {"V": expected}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "${REQ:?set REQ to the robot id}",
            "required variable REQ is missing a value: set REQ to the robot id",
        ),
        ("${EMPTY:?}", "required variable EMPTY is missing a value"),
        ("${REQ?gone}", "required variable REQ is missing a value: gone"),
        ("${A", "unclosed '${' in '${A'"),
        ("${A B}", "malformed '${A B}' in '${A B}'"),
        ("${}", "malformed '${}' in '${}'"),
        ("100$", "lone '$' in '100$': write '$$' for a literal '$'"),
        ("$1", "lone '$' in '$1': write '$$' for a literal '$'"),
    ],
)
def test_interpolation_errors_name_the_line(template: str, message: str) -> None:
    text = _y("services:", "  a:", "    image: x", "    environment:", "      V: " + repr(template))
    assert _problems(text, env={"EMPTY": ""}) == [f"line 5: services.a.environment.V: {message}"]


def test_a_failed_interpolation_is_reported_once() -> None:
    text = _y("services:", "  a:", "    image: ${IMAGE:?set IMAGE}", "    ports: ['${P']")
    assert _problems(text) == [
        "line 3: services.a.image: required variable IMAGE is missing a value: set IMAGE",
        "line 4: services.a.ports.0: unclosed '${' in '${P'",
    ]


def test_interpolation_reads_dotenv_and_env_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "TAG=from-dotenv\nOVERRIDE=dotenv\nREPLICAS=3\nexport PORT='8080'\n"
    )
    text = _y(
        "services:",
        "  a:",
        "    image: robot:${TAG}",
        "    ports: ['${PORT}:80']",
        "    environment: {O: $OVERRIDE}",
        "    deploy: {replicas: '${REPLICAS}'}",
    )
    service = parse_compose(text, env={"OVERRIDE": "env"}, base_dir=tmp_path, read=_read).services[
        "a"
    ]
    assert service.image == "robot:from-dotenv"
    assert service.ports == (PortMapping(80, 8080),)
    assert service.environment == {"O": "env"}
    assert service.replicas == 3


def test_bad_dotenv_line_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OK=1\nnot a pair\n")
    (problem,) = _problems(_y("services:", "  a: {image: x}"), base_dir=tmp_path)
    assert problem.startswith("file: ")
    assert ".env line 2: expected KEY=VALUE" in problem


def test_interpolation_leaves_keys_alone_and_values_are_validated_after() -> None:
    service = _service("image: x", "environment: {$KEY: v}")
    assert service.environment == {"$KEY": "v"}
    text = _y("services:", "  a:", "    image: x", "    deploy:", "      replicas: $N")
    assert _problems(text, env={"N": "lots"}) == [
        "line 5: services.a.deploy.replicas: expected a whole number"
    ]


def test_interpolation_skips_extension_keys() -> None:
    text = _y("x-unused: ${NEVER:?not needed}", "services:", "  a: {image: x}")
    assert parse_compose(text).services["a"].image == "x"


# ---------------------------------------------------------------- errors, each with its line


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param(
            ["services:", "  a: {image: x}", "secrets: {}"],
            ["line 3: secrets: unknown or unsupported key"],
            id="unknown-top-level-key",
        ),
        pytest.param(
            ["services:", "  a:", "    build: /src", "    imgae: x"],
            ["line 4: services.a.imgae: unknown or unsupported key"],
            id="misspelled-key",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    links: [b]", "    logging: {driver: none}"],
            [
                "line 4: services.a.links: unknown or unsupported key",
                "line 5: services.a.logging: unknown or unsupported key",
            ],
            id="unsupported-keys",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    container_name: robot"],
            [
                "line 4: services.a.container_name: "
                "corral names containers itself; remove container_name"
            ],
            id="container-name",
        ),
        pytest.param(
            ["services:", "  a:", "    command: run"],
            ["line 2: services.a: a service needs image or build"],
            id="missing-image-and-build",
        ),
        pytest.param(
            ["services:", "  Robot_A: {image: x}"],
            [
                "line 2: services.Robot_A: service name 'Robot_A' must be 1-63 lowercase letters, "
                "digits, '.', '_' or '-', starting and ending with a letter or digit"
            ],
            id="bad-service-name",
        ),
        pytest.param(
            [
                "services:",
                "  a:",
                "    image: x",
                "    deploy:",
                "      placement:",
                "        constraints:",
                "          - node.hostname = edge",
            ],
            [
                "line 7: services.a.deploy.placement.constraints.0: "
                "constraint 'node.hostname = edge' "
                "must look like 'node.labels.role == robot'"
            ],
            id="constraint-syntax",
        ),
        pytest.param(
            [
                "services:",
                "  a:",
                "    image: x",
                "    deploy:",
                "      placement:",
                "        constraints: [node.role == worker, node.id == abc]",
            ],
            [
                "line 6: services.a.deploy.placement.constraints.1: constraint 'node.id == abc': "
                "unknown field 'node.id'; supported: node.hostname, node.role, "
                "node.labels.<key>, engine.labels.<key>"
            ],
            id="constraint-field",
        ),
        pytest.param(
            [
                "services:",
                "  a:",
                "    image: x",
                "    depends_on: [b]",
                "  b:",
                "    image: x",
                "    depends_on: [a]",
            ],
            ["line 4: services.a.depends_on: depends_on cycle: a -> b -> a"],
            id="cycle",
        ),
        pytest.param(
            [
                "services:",
                "  c: {image: x, depends_on: [a]}",
                "  a:",
                "    image: x",
                "    depends_on: [b]",
                "  b: {image: x, depends_on: [c]}",
            ],
            ["line 2: services.c.depends_on: depends_on cycle: c -> a -> b -> c"],
            id="cycle-of-three",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    depends_on: [a]"],
            ["line 4: services.a.depends_on: depends_on cycle: a -> a"],
            id="self-dependency",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    depends_on:", "      - db"],
            ["line 5: services.a.depends_on.0: depends on unknown service 'db'"],
            id="unknown-dependency",
        ),
        pytest.param(
            [
                "services:",
                "  db: {image: x}",
                "  a:",
                "    image: x",
                "    depends_on:",
                "      db: {condition: service_healthy}",
            ],
            ["line 6: services.a.depends_on.db: service_healthy needs a healthcheck on 'db'"],
            id="healthy-without-healthcheck",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    networks:", "      - ros"],
            [
                "line 5: services.a.networks.0: "
                "network 'ros' is not declared under top-level networks"
            ],
            id="undeclared-network",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    volumes:", "      - maps:/maps"],
            ["line 5: services.a.volumes.0: volume 'maps' is not declared under top-level volumes"],
            id="undeclared-volume",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    ports:", "      - 80", "      - 70000:80"],
            ["line 6: services.a.ports.1: port '70000:80': '70000' is not a port number (1-65535)"],
            id="bad-port",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    ports: ['8000-8010:8000-8010']"],
            [
                "line 4: services.a.ports.0: port '8000-8010:8000-8010': port ranges are not "
                "supported; list each port"
            ],
            id="port-range",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    ports: ['80/sctp']"],
            ["line 4: services.a.ports.0: port '80/sctp': protocol must be tcp or udp"],
            id="port-protocol",
        ),
        pytest.param(
            [
                "services:",
                "  a:",
                "    image: x",
                "    healthcheck:",
                "      test: [CMD, true]",
                "      interval: 10 parsecs",
            ],
            [
                "line 6: services.a.healthcheck.interval: bad duration '10 parsecs': use seconds "
                "or units like 1m30s, 500ms, 10s, 2h"
            ],
            id="bad-duration",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    labels:", "      corral.stack: mine"],
            [
                "line 5: services.a.labels.corral.stack: label 'corral.stack': keys starting "
                "with 'corral.' are reserved"
            ],
            id="reserved-label",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    deploy:", "      mode: global"],
            [
                "line 5: services.a.deploy.mode: deploy mode 'global' (a task on every node) "
                "needs swarm mode (x-corral: {mode: swarm}); in container mode use replicas and "
                "constraints"
            ],
            id="global-mode",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    deploy:", "      mode: spread"],
            [
                "line 5: services.a.deploy.mode: deploy mode 'spread' is not supported; use "
                "replicated or global"
            ],
            id="unknown-deploy-mode",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    deploy: {replicas: 101}"],
            ["line 4: services.a.deploy.replicas: must be between 0 and 100, not 101"],
            id="too-many-replicas",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    network_mode: service:b"],
            [
                "line 4: services.a.network_mode: network_mode 'service:b' is not supported; "
                "use host, none or bridge"
            ],
            id="network-mode",
        ),
        pytest.param(
            [
                "services:",
                "  a:",
                "    image: x",
                "    network_mode: host",
                "    networks: [n]",
                "networks: {n: }",
            ],
            ["line 5: services.a.networks: networks cannot be combined with network_mode"],
            id="networks-and-network-mode",
        ),
        pytest.param(
            [
                "services:",
                "  a:",
                "    image: x",
                "    deploy:",
                "      resources:",
                "        reservations:",
                "          devices: [{capabilities: [gpu]}]",
            ],
            [
                "line 7: services.a.deploy.resources.reservations.devices: "
                "unknown or unsupported key"
            ],
            id="gpu-reservations",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    restart: sometimes"],
            [
                "line 4: services.a.restart: restart 'sometimes': use no, always, on-failure[:N] "
                "or unless-stopped"
            ],
            id="restart",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    healthcheck: {test: [RUN, x]}"],
            [
                'line 4: services.a.healthcheck.test: test must be a string, ["CMD", arg...], '
                '["CMD-SHELL", "cmd"] or ["NONE"]'
            ],
            id="healthcheck-test",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    devices: [ttyUSB0]"],
            ["line 4: services.a.devices.0: device 'ttyUSB0' must look like /dev/x[:/dev/y[:rwm]]"],
            id="device",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    shm_size: lots"],
            [
                "line 4: services.a.shm_size: bad size 'lots': use bytes or units like 1024b, "
                "512k, 64m, 1g"
            ],
            id="shm-size",
        ),
        pytest.param(
            [
                "services:",
                "  a:",
                "    image: x",
                "    volumes: ['data:/data:z']",
                "volumes:",
                "  data:",
            ],
            ["line 4: services.a.volumes.0: volume option 'z' is not supported (ro or rw)"],
            id="volume-option",
        ),
        pytest.param(
            ["services:", "  a:", "    image: x", "    volumes: ['/data:relative']"],
            ["line 4: services.a.volumes.0: target 'relative' must be absolute (start with '/')"],
            id="volume-target",
        ),
        pytest.param(
            ["services:", "  a: {image: x}", "networks:", "  n:", "    name: fixed"],
            [
                "line 5: networks.n.name: only an external network may set name; corral names "
                "the networks it creates"
            ],
            id="network-name-not-external",
        ),
        pytest.param(
            [
                "services:",
                "  a: {image: x}",
                "networks:",
                "  n:",
                "    external: true",
                "    driver: overlay",
            ],
            ["line 6: networks.n.driver: an external network takes only 'name'"],
            id="external-network-extra-key",
        ),
        pytest.param(
            [
                "services:",
                "  a: {image: x}",
                "networks:",
                "  n:",
                "    ipam:",
                "      config: [{subnet: 10.0.0.1/24}]",
            ],
            [
                "line 6: networks.n.ipam.config.0.subnet: bad subnet '10.0.0.1/24': "
                "10.0.0.1/24 has host bits set"
            ],
            id="bad-subnet",
        ),
        pytest.param(
            ["services:", "  a: {image: x}", "volumes:", "  v:", "    driver_opts: {type: nfs}"],
            ["line 5: volumes.v.driver_opts: unknown or unsupported key"],
            id="volume-driver-opts",
        ),
        pytest.param(
            ["services: {}"],
            ["line 1: services: a stack needs a non-empty 'services' mapping"],
            id="no-services",
        ),
        pytest.param(
            ["- just", "- a list"],
            ["line 1: expected a mapping with a 'services' key"],
            id="not-a-mapping",
        ),
        pytest.param(
            ["services:", "  a:", "    image: [x"],
            ["line 4: not valid YAML: expected ',' or ']', but got '<stream end>'"],
            id="yaml-syntax",
        ),
    ],
)
def test_errors_name_their_line(lines: list[str], expected: list[str]) -> None:
    assert _problems(_y(*lines)) == expected


def test_every_problem_is_listed_in_line_order() -> None:
    text = _y(
        "services:",
        "  a:",
        "    image: x",
        "    ports: ['abc']",
        "    depends_on: [ghost]",
        "  b:",
        "    restart: maybe",
        "  c:",
        "    image: x",
        "    container_name: c",
        "extra: 1",
    )
    problems = _problems(text)
    assert [p.split(":")[0] for p in problems] == [
        "line 4",
        "line 5",
        "line 6",
        "line 7",
        "line 10",
        "line 11",
    ]


def test_problems_inside_a_merged_anchor_point_at_the_anchor() -> None:
    text = _y(
        "x-base: &base",
        "  restart: sometimes",
        "services:",
        "  a:",
        "    <<: *base",
        "    image: x",
    )
    (problem,) = _problems(text)
    assert problem.startswith("line 2: services.a.restart:")


def test_relative_paths_need_a_base_dir() -> None:
    text = _y(
        "services:", "  a:", "    build: .", "    volumes: ['./data:/data']", "    env_file: x.env"
    )
    assert _problems(text) == [
        "line 3: services.a.build: relative build context '.' needs the stack's directory; "
        "none was given",
        "line 4: services.a.volumes.0: relative bind source './data' needs the stack's "
        "directory; none was given",
        "line 5: services.a.env_file: relative env_file 'x.env' needs the stack's directory; "
        "none was given",
    ]


def test_missing_env_file_is_a_problem(tmp_path: Path) -> None:
    text = _y("services:", "  a:", "    image: x", "    env_file:", "      - nope.env")
    assert _problems(text, base_dir=tmp_path) == [
        f"line 5: services.a.env_file.0: env_file '{tmp_path / 'nope.env'}' does not exist"
    ]


def test_recursive_and_exploding_aliases_are_refused() -> None:
    assert _problems("a: &a [*a]\n") == ["file: not valid YAML: line 1: an alias refers to itself"]
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in "bcdef":
        previous = chr(ord(level) - 1)
        bomb.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 10) + "]")
    assert _problems(_y(*bomb)) == ["file: aliases expand to a file that is too big"]


# ---------------------------------------------------------------- service_hash


def test_service_hash_ignores_order_line_and_replicas() -> None:
    first = _y(
        "services:",
        "  a:",
        "    image: x",
        "    environment: {A: '1', B: '2'}",
        "    labels: {k1: v1, k2: v2}",
        "    networks: {n1: {}, n2: {aliases: [z]}}",
        "    deploy: {replicas: 1}",
        "networks: {n1: , n2: }",
    )
    second = _y(
        "networks: {n2: , n1: }",
        "services:",
        "  other: {image: y}",
        "  a:",
        "    deploy: {replicas: 5}",
        "    networks: {n2: {aliases: [z]}, n1: {}}",
        "    labels: {k2: v2, k1: v1}",
        "    environment: [B=2, A=1]",
        "    image: x",
    )
    one, two = parse_compose(first).services["a"], parse_compose(second).services["a"]
    assert one.line != two.line
    assert one.replicas != two.replicas
    assert service_hash(one) == service_hash(two)
    assert len(service_hash(one)) == 16
    int(service_hash(one), 16)


@pytest.mark.parametrize(
    "change",
    [
        "image: y",
        "environment: {A: '2'}",
        "ports: ['81:80']",
        "deploy: {resources: {limits: {memory: 1g}}}",
        "healthcheck: {test: exit 0, interval: 1s}",
        "command: [run, --fast]",
    ],
)
def test_service_hash_changes_with_a_field(change: str) -> None:
    base = _service("image: x", "environment: {A: '1'}")
    key = change.split(":")[0]
    body = [line for line in ("image: x", "environment: {A: '1'}") if not line.startswith(key)]
    assert service_hash(_service(*body, change)) != service_hash(base)


def test_service_hash_is_the_same_in_another_process() -> None:
    spec = ServiceSpec(
        "a",
        "x",
        3,
        environment={"B": "2", "A": "1"},
        labels={"z": "1", "a": "2"},
        healthcheck=Healthcheck(("CMD", "true")),
    )
    code = (
        "from corral.model.stack_spec import *\n"
        "print(service_hash(ServiceSpec('a', 'x', 9, environment={'A': '1', 'B': '2'},"
        " labels={'a': '2', 'z': '1'}, healthcheck=Healthcheck(('CMD', 'true'), 30.0))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert out.stdout.strip() == service_hash(spec)


# ---------------------------------------------------------------- Constraint.matches


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        (Constraint("node.hostname", "==", "edge"), True),
        (Constraint("node.hostname", "!=", "edge"), False),
        (Constraint("node.role", "==", "manager"), False),
        (Constraint("node.role", "!=", "manager"), True),
        (Constraint("node.labels.role", "==", "robot"), True),
        (Constraint("node.labels.role", "==", "drone"), False),
        (Constraint("node.labels.gpu", "==", "yes"), False),
        (Constraint("node.labels.gpu", "!=", "yes"), True),
        (Constraint("engine.labels.zone", "==", "lab"), True),
        (Constraint("engine.labels.zone", "!=", "lab"), False),
        (Constraint("engine.labels.role", "==", "robot"), False),
    ],
)
def test_constraint_matches(constraint: Constraint, expected: bool) -> None:
    matched = constraint.matches("edge", "worker", {"role": "robot"}, {"zone": "lab"})
    assert matched is expected


def test_constraint_values_ignore_case_like_swarm() -> None:
    assert Constraint("node.hostname", "==", "Edge").matches("edge", "worker", {}, {})
    assert Constraint("node.labels.Role", "==", "robot").matches(
        "h", "worker", {"Role": "ROBOT"}, {}
    )
    assert not Constraint("node.labels.role", "==", "robot").matches(
        "h", "w", {"Role": "robot"}, {}
    )


def test_constraint_fields_are_normalised_but_label_keys_keep_case() -> None:
    service = _service(
        "image: x",
        "deploy: {placement: {constraints: [Node.Hostname==edge, NODE.LABELS.Zone != lab]}}",
    )
    assert service.constraints == (
        Constraint("node.hostname", "==", "edge"),
        Constraint("node.labels.Zone", "!=", "lab"),
    )


# ---------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("1h2m3s4ms", 3723.004),
        ("250us", 0.00025),
        ("10", 10.0),
        (7, 7.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10 parsecs", "-1s", "1d", "1m 30s", "1.2.3s", True, -1])
def test_parse_duration_refuses(text: str | int) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024b", 1024),
        ("512k", 512 << 10),
        ("64m", 64 << 20),
        ("1g", 1 << 30),
        ("1GB", 1 << 30),
        ("2MiB", 2 << 20),
        ("1.5k", 1536),
        ("100", 100),
        (4096, 4096),
    ],
)
def test_parse_bytes(text: str | int, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "lots", "1p", "-1k", "1 g b", True, -5])
def test_parse_bytes_refuses(text: str | int) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_bytes(text)


@given(
    hours=st.integers(0, 48),
    minutes=st.integers(0, 59),
    seconds=st.integers(0, 59),
    millis=st.integers(0, 999),
)
def test_parse_duration_round_trip(hours: int, minutes: int, seconds: int, millis: int) -> None:
    parts = [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")]
    text = "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"
    expected = hours * 3600 + minutes * 60 + seconds + millis / 1000
    assert parse_duration(text) == pytest.approx(expected)


@given(
    number=st.integers(0, 10**6),
    unit=st.sampled_from(["", "b", "k", "kb", "KiB", "m", "MB", "g", "gib", "t"]),
)
def test_parse_bytes_round_trip(number: int, unit: str) -> None:
    power = "bkmgt".index(unit[0].lower()) if unit else 0
    assert parse_bytes(f"{number}{unit}") == number * 1024**power
    assert parse_bytes(number) == number


# ---------------------------------------------------------------- anything else is FileInvalid


def _parse_or_error(text: str, base_dir: Path | None = None) -> StackSpec | FileInvalid:
    """The spec, or the FileInvalid raised; any other exception fails the test."""
    try:
        return parse_compose(text, base_dir=base_dir, read=_read)
    except FileInvalid as exc:
        return exc


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_random_text_only_raises_file_invalid(text: str) -> None:
    outcome = _parse_or_error(text)
    assert isinstance(outcome, StackSpec) or outcome.problems


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["80:80", "${X:-1}", "$", "/a:/b:ro", "1m", "64m", "node.role == x", "."]),
)
_KEYS = ["image", "build", "command", "ports", "volumes", "networks", "depends_on"]
_KEYS += ["environment", "healthcheck", "deploy", "test", "target", "source", "type"]
_KEYS += ["replicas", "resources", "limits", "cpus", "memory", "placement", "constraints"]
_KEYS += ["condition", "labels", "restart", "aliases", "external", "name", "x-y", "a", "b"]
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    services=st.dictionaries(st.sampled_from(["a", "b", "C", "d-1"]), _VALUES, max_size=3),
    networks=_VALUES,
    volumes=_VALUES,
)
def test_random_stacks_only_raise_file_invalid(
    services: dict[str, object], networks: object, volumes: object
) -> None:
    text = yaml.safe_dump({"services": services, "networks": networks, "volumes": volumes})
    outcome = _parse_or_error(text, base_dir=Path("/nonexistent-corral-test"))
    if isinstance(outcome, FileInvalid):
        assert outcome.problems
        assert all(isinstance(p.line, int) for p in outcome.problems)
    else:
        outcome.waves()
        for service in outcome.services.values():
            assert len(service_hash(service)) == 16
