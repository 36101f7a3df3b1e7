"""The hosts file: both shapes (name: URL, name: mapping) and errors that name the line.

Pure parsing; nothing is registered.
"""

import pytest

from corral.model.hostsfile import parse_hosts_file
from corral.model.yamlfile import FileInvalid

GOOD = """\
hosts:
  edge: unix:///var/run/docker.sock
  robot:
    url: tcp://10.231.0.2:2375
    labels:
      role: robot
"""


def test_both_shapes_parse() -> None:
    specs = {s.name: s for s in parse_hosts_file(GOOD)}
    assert specs["edge"].url == "unix:///var/run/docker.sock"
    assert specs["robot"].labels == {"role": "robot"}


def _problems(text: str) -> list[str]:
    with pytest.raises(FileInvalid) as caught:
        parse_hosts_file(text, "hosts.yml")
    return [str(p) for p in caught.value.problems]


def test_unknown_key_names_its_line() -> None:
    text = "hosts:\n  robot:\n    url: tcp://10.231.0.2:2375\n    colour: red\n"
    assert _problems(text) == ["line 4: hosts.robot.colour: unknown key"]


def test_bad_url_names_its_line() -> None:
    text = "hosts:\n  edge: unix:///x.sock\n  robot:\n    url: tcp://10.231.0.2\n"
    (problem,) = _problems(text)
    assert problem.startswith("line 4: hosts.robot.url:")
    assert "needs a port" in problem


def test_every_problem_is_listed() -> None:
    text = "hosts:\n  Bad: tcp://h:1\n  robot: ftp://x\n"
    problems = _problems(text)
    assert len(problems) == 2
    assert problems[0].startswith("line 2: hosts.Bad.name")
    assert problems[1].startswith("line 3: hosts.robot.url")


def test_duplicate_key_and_bad_yaml_and_wrong_top_level() -> None:
    assert _problems("hosts:\n  a: tcp://h:1\n  a: tcp://h:2\n") == [
        "line 3: hosts.a: key appears twice"
    ]
    assert _problems("hosts: [\n")[0].startswith("line ")
    assert _problems("clients:\n  a: tcp://h:1\n") == ["line 1: clients: unknown key 'clients'"]
    assert "expected a mapping" in _problems("hosts: [a, b]\n")[0]


def test_empty_file_means_no_hosts() -> None:
    assert parse_hosts_file("hosts: {}\n") == []
