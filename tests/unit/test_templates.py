"""Session templates: parameters, their checks, instantiation and readiness parsing (pure)."""

from pathlib import Path

import pytest

from corral.model.compose import parse_compose
from corral.model.readiness import listening_ports
from corral.model.templates import (
    ParamsInvalid,
    bind,
    instantiate,
    parse_template,
    reservation,
)
from corral.model.yamlfile import FileInvalid

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "edgeecho"

BASE = """
x-corral-template:
  name: demo
  parameters:
    count: {type: int, default: 10, min: 1, max: 100}
    fast: {type: bool, default: false}
    mode: {type: str, choices: [a, b]}
  resources: {cpus: 0.5, memory: 32M}
  ttl: 90s
services:
  one:
    image: img
    environment: {COUNT: "${count}", FAST: "${fast}", MODE: "${mode}", ID: "${session_id}"}
    expose: ["7000"]
  two:
    x-corral-if: fast
    image: img
    depends_on: [one]
"""


def test_a_template_declares_typed_parameters() -> None:
    spec = parse_template(BASE, "demo.yml")
    assert spec.name == "demo"
    assert [(p.name, p.type, p.default) for p in spec.parameters.values()] == [
        ("count", "int", 10),
        ("fast", "bool", False),
        ("mode", "str", None),
    ]
    assert (spec.cpus, spec.memory, spec.ttl_s) == (0.5, 32 << 20, 90.0)
    assert spec.conditions == {"two": ("fast", True)}


def test_binding_checks_every_parameter_and_names_it() -> None:
    spec = parse_template(BASE, "demo.yml")
    assert bind(spec, {"mode": "a"}) == {"count": 10, "fast": False, "mode": "a"}
    with pytest.raises(ParamsInvalid) as caught:
        bind(spec, {"count": "10", "fast": 1, "mode": "c", "extra": 1})
    problems = caught.value.problems
    assert set(problems) == {"count", "fast", "mode", "extra"}
    assert "whole number" in problems["count"]
    assert "true or false" in problems["fast"]
    assert "not one of a, b" in problems["mode"]
    assert "no such parameter" in problems["extra"]
    with pytest.raises(ParamsInvalid, match="count: 0 is below the minimum 1"):
        bind(spec, {"count": 0, "mode": "a"})
    with pytest.raises(ParamsInvalid, match="mode: is required"):
        bind(spec, {})
    with pytest.raises(ParamsInvalid, match="above the maximum"):
        bind(spec, {"count": 101, "mode": "a"})
    with pytest.raises(ParamsInvalid, match="whole number"):
        bind(spec, {"count": True, "mode": "a"})  # a boolean is not a number here


def test_instantiation_fills_values_and_leaves_out_switched_off_services() -> None:
    spec = parse_template(BASE, "demo.yml")
    off = instantiate(spec, bind(spec, {"mode": "b"}), "ABC", "ses-abc", None)
    assert sorted(off.services) == ["one"]
    env = off.services["one"].environment
    assert env == {"COUNT": "10", "FAST": "false", "MODE": "b", "ID": "ABC"}
    assert off.services["one"].expose == (7000,)
    on = instantiate(spec, bind(spec, {"mode": "b", "fast": True}), "ABC", "ses-abc", None)
    assert on.waves() == [["one"], ["two"]]
    assert reservation(spec, on) == (0.5, 32 << 20)


def test_reservation_defaults_to_the_services_own() -> None:
    text = """
x-corral-template: {name: r}
services:
  a: {image: i, deploy: {resources: {reservations: {cpus: "0.25", memory: 16M}}}}
  b: {image: i, deploy: {resources: {reservations: {cpus: "0.5"}}}}
"""
    spec = parse_template(text, "r.yml")
    assert reservation(spec, instantiate(spec, {}, "X", "ses-x", None)) == (0.75, 16 << 20)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services: {a: {image: i}}", "a template needs a name"),
        ("x-corral-template: {name: t}\nservices: {a: {image: '${who}'}}", "${who} is not a"),
        (
            "x-corral-template: {name: t, parameters: {n: {type: float}}}\n"
            "services: {a: {image: i}}",
            "type 'float' is not int, bool or str",
        ),
        (
            "x-corral-template: {name: t, parameters: {n: {type: int, min: 5, max: 1}}}\n"
            "services: {a: {image: i}}",
            "min 5 is above max 1",
        ),
        (
            "x-corral-template: {name: t, parameters: {n: {type: int, default: x}}}\n"
            "services: {a: {image: i}}",
            "expected a whole number",
        ),
        (
            "x-corral-template: {name: t, parameters: {session_id: {type: str}}}\n"
            "services: {a: {image: i}}",
            "cannot be a parameter name",
        ),
        (
            "x-corral-template: {name: t, parameters: {n: {type: int}}}\n"
            "services: {a: {image: i, x-corral-if: n}}",
            "x-corral-if must be",
        ),
        ("x-corral-template: {name: t, ttl: forever}\nservices: {a: {image: i}}", "ttl"),
        ("x-corral-template: {name: t, colour: red}\nservices: {a: {image: i}}", "unknown key"),
        (
            "x-corral-template: {name: t}\nservices: {a: {image: i}}\nvolumes: {data: {}}",
            "cannot declare volumes",
        ),
        (
            "x-corral-template: {name: t}\nservices: {a: {image: i, network_mode: host}}",
            "private network",
        ),
        (
            "x-corral-template: {name: t}\nservices: {a: {image: i, deploy: {replicas: 2}}}",
            "one of each service",
        ),
        ("x-corral-template: {name: t}\nservices: {a: {image: i, expose: [udp]}}", "port"),
        ("x-corral-template: {name: Bad Name}\nservices: {a: {image: i}}", "template name"),
    ],
)
def test_bad_templates_say_what_and_where(text: str, expected: str) -> None:
    with pytest.raises(FileInvalid) as caught:
        parse_template(text, "t.yml")
    assert expected in str(caught.value)


def test_an_unknown_variable_is_reported_on_its_line() -> None:
    text = "x-corral-template: {name: t}\nservices:\n  a:\n    image: i\n    command: echo $oops\n"
    with pytest.raises(FileInvalid) as caught:
        parse_template(text, "t.yml")
    assert caught.value.problems[0].line == 5


def test_a_dependency_on_a_switched_off_service_is_refused() -> None:
    text = """
x-corral-template: {name: t, parameters: {on: {type: bool, default: false}}}
services:
  a: {image: i, x-corral-if: on}
  b: {image: i, depends_on: [a]}
"""
    spec = parse_template(text, "t.yml")
    with pytest.raises(FileInvalid, match="depends on a, which is off"):
        instantiate(spec, {"on": False}, "X", "ses-x", None)


def test_the_edgeecho_example_is_a_valid_template() -> None:
    spec = parse_template((EXAMPLE / "edgeecho.yml").read_text(), "edgeecho.yml")
    segmented = instantiate(spec, bind(spec, {}), "S", "ses-s", EXAMPLE)
    assert segmented.waves() == [["probe"], ["stream"], ["segmentation"]]
    plain = instantiate(spec, bind(spec, {"plain_stream": True}), "S", "ses-s", EXAMPLE)
    assert sorted(plain.services) == ["probe", "stream"]
    # The seed's emulators test `plain_stream == 'True'` (Python's rendering of a bool).
    assert plain.services["stream"].environment["plain_stream"] == "True"
    assert segmented.services["stream"].environment["plain_stream"] == "False"
    build = plain.services["probe"].build
    assert build is not None
    assert build.context == str(EXAMPLE / "emulators")


def test_bool_parameters_render_as_asked() -> None:
    text = """
x-corral-template:
  name: t
  parameters:
    a: {type: bool, default: true}
    b: {type: bool, default: true, render: python}
    c: {type: bool, default: false, render: number}
services:
  s: {image: i, environment: {A: "${a}", B: "${b}", C: "${c}"}}
"""
    spec = parse_template(text, "t.yml")
    env = instantiate(spec, bind(spec, {}), "X", "ses-x", None).services["s"].environment
    assert dict(env) == {"A": "true", "B": "True", "C": "0"}


def test_a_bad_render_is_refused_on_its_line() -> None:
    text = """x-corral-template:
  name: t
  parameters:
    a: {type: bool, render: yaml}
    n: {type: int, default: 1, render: python}
services:
  s: {image: i, environment: {A: "${a}", N: "${n}"}}
"""
    with pytest.raises(FileInvalid) as caught:
        parse_template(text, "t.yml")
    found = {p.line: p.message for p in caught.value.problems}
    assert found[4].startswith("render 'yaml' is not one of lower (true/false), python (True")
    assert found[5] == "render applies to bool parameters only"


def test_expose_is_parsed_for_stacks_too() -> None:
    spec = parse_compose("services: {a: {image: i, expose: ['80', 81, '82/tcp']}}", "s")
    assert spec.services["a"].expose == (80, 81, 82)


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:3039 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0200A8C0:3039 0300A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:303A 00000000000000000000000000000000:0000 0A
"""


def test_listening_ports_come_from_proc_net_tcp() -> None:
    # 0x3039 = 12345 and 0x1F90 = 8080 listen; the established connection does not count.
    assert listening_ports(PROC_NET_TCP) == {12345, 8080, 12346}
    assert listening_ports("") == set()
    assert listening_ports("garbage\n  0: nothing") == set()
