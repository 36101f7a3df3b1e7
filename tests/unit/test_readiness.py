"""Readiness judgements shared by stacks and sessions (model/readiness.py, pure)."""

from corral.model.containers import ContainerInfo
from corral.model.readiness import COMPLETED, HEALTHY, PROBE, READY, STARTED, dependencies, judge
from corral.model.stack_spec import Dependency, Healthcheck, ServiceSpec, StackSpec

PLAIN = ServiceSpec("plain", "img", 1)
LISTENS = ServiceSpec("web", "img", 1, expose=(8080,))
CHECKED = ServiceSpec("db", "img", 1, healthcheck=Healthcheck(("CMD", "true")))


def seen(state: str, exit_code: int = 0, health: str = "") -> ContainerInfo:
    return ContainerInfo("id", "name", state, {}, exit_code, health)


def test_started_means_running_and_listening_on_its_ports() -> None:
    assert judge(PLAIN, STARTED, seen("running")) == READY
    assert judge(PLAIN, STARTED, seen("created")).why == "is created"
    assert judge(LISTENS, STARTED, seen("running")) == PROBE
    assert judge(LISTENS, STARTED, seen("running"), {8080}) == READY
    waiting = judge(LISTENS, STARTED, seen("running"), set())
    assert (waiting.outcome, waiting.why) == ("waiting", "does not listen on port 8080")


def test_an_ended_container_is_ready_only_when_that_was_the_point() -> None:
    assert judge(PLAIN, STARTED, seen("exited")) == READY
    assert judge(PLAIN, COMPLETED, seen("exited")) == READY
    assert judge(PLAIN, COMPLETED, seen("running")).outcome == "waiting"
    failed = judge(PLAIN, COMPLETED, seen("exited", 3))
    assert failed.outcome == "failed"
    assert failed.why == "plain exited with code 3 before it was ready"
    assert judge(LISTENS, STARTED, seen("exited")).outcome == "failed"
    assert judge(CHECKED, HEALTHY, seen("exited")).outcome == "failed"


def test_healthy_follows_the_healthcheck() -> None:
    assert judge(CHECKED, HEALTHY, seen("running", health="starting")).outcome == "waiting"
    assert judge(CHECKED, HEALTHY, seen("running", health="healthy")) == READY
    assert judge(CHECKED, HEALTHY, seen("running", health="unhealthy")).why == "db is unhealthy"


def test_dependencies_of_a_wave_each_once() -> None:
    spec = StackSpec(
        services={
            "a": PLAIN,
            "b": ServiceSpec("b", "img", 2, depends_on=(Dependency("plain", COMPLETED),)),
            "c": ServiceSpec("c", "img", 3, depends_on=(Dependency("plain", COMPLETED),)),
        },
        networks={},
        volumes={},
    )
    assert dependencies(spec, ["b", "c"]) == [("plain", COMPLETED)]
