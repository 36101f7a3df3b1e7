"""The vehicles file (`corral robot apply-vda`): what it declares, and errors that name the
line. Pure parsing; nothing is registered."""

import pytest

from corral.model.vehiclesfile import parse_vehicles_file
from corral.model.yamlfile import FileInvalid

GOOD = """\
vehicles:
  agv1:
    manufacturer: acme
    serial_number: 007
    map: yard
    marker: r0c0
  agv2:
    manufacturer: acme
    serial_number: sn2
    group: night
    priority: 5
"""


def test_a_file_declares_its_vehicles() -> None:
    specs = {s.name: s for s in parse_vehicles_file(GOOD)}
    assert specs["agv1"].serial_number == "007", "a serial number stays as written"
    assert (specs["agv1"].map, specs["agv1"].marker) == ("yard", "r0c0")
    assert (specs["agv2"].group, specs["agv2"].priority) == ("night", 5)
    assert specs["agv2"].map is None


def _problems(text: str) -> list[str]:
    with pytest.raises(FileInvalid) as caught:
        parse_vehicles_file(text, "vehicles.yml")
    return [str(p) for p in caught.value.problems]


def test_every_problem_is_listed_with_its_line() -> None:
    text = (
        "vehicles:\n"
        "  agv1:\n"
        "    manufacturer: acme\n"
        "    serial_number: a/b\n"
        "  Bad:\n"
        "    manufacturer: acme\n"
        "    serial_number: sn3\n"
        "  agv3:\n"
        "    manufacturer: acme\n"
        "    serial_number: sn4\n"
        "    colour: red\n"
        "  agv4:\n"
        "    serial_number: sn5\n"
        "  agv5:\n"
        "    manufacturer: acme\n"
        "    serial_number: sn6\n"
        "    priority: high\n"
    )
    problems = _problems(text)
    assert problems[0].startswith("line 4: vehicles.agv1.serial_number: String should match")
    assert problems[1].startswith("line 5: vehicles.Bad.name: String should match")
    assert problems[2] == "line 11: vehicles.agv3.colour: unknown key"
    assert problems[3] == "line 12: vehicles.agv4.manufacturer: Field required"
    assert problems[4].startswith(
        "line 17: vehicles.agv5.priority: Input should be a valid integer"
    )
    assert len(problems) == 5


def test_one_vehicle_under_two_names_is_refused() -> None:
    text = (
        "vehicles:\n"
        "  a:\n    manufacturer: acme\n    serial_number: sn1\n"
        "  b:\n    manufacturer: acme\n    serial_number: sn1\n"
    )
    assert _problems(text) == ["line 7: vehicles.b.serial_number: acme/sn1 is vehicle a already"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("robots: {}\n", "line 1: robots: unknown key 'robots'"),
        ("- a\n", "line 1: expected a mapping with a 'vehicles' key"),
        ("vehicles: [a]\n", "line 1: vehicles: expected a mapping of robot names"),
        ("vehicles:\n  a: acme\n", "line 2: vehicles.a: expected a mapping"),
        ("vehicles:\n  a: {name: b}\n", "line 2: vehicles.a.name: the name is the key above"),
        (
            "vehicles: {\n",
            "line 2: not valid YAML: expected the node content, but found '<stream end>'",
        ),
    ],
)
def test_a_file_of_the_wrong_shape_is_refused(text: str, problem: str) -> None:
    assert _problems(text) == [problem]
