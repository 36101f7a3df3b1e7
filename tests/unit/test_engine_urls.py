"""Engine URL parsing and the engine-address allow-list, as users type them.

Pure logic: no engine is contacted.
"""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from corral.model.hosts import HostSpec, engine_url_allowed, parse_engine_url


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "path"),
    [
        ("unix:///var/run/docker.sock", "unix", "", 0, "/var/run/docker.sock"),
        ("tcp://10.231.0.2:2375", "tcp", "10.231.0.2", 2375, ""),
        ("tcp://robot.lab:2376", "tcp", "robot.lab", 2376, ""),
        ("tcp://[::1]:2375", "tcp", "::1", 2375, ""),
        ("ssh://pi@robot.lab", "ssh", "robot.lab", 22, ""),
        ("ssh://robot.lab:2222", "ssh", "robot.lab", 2222, ""),
    ],
)
def test_good_urls_parse(url: str, scheme: str, host: str, port: int, path: str) -> None:
    address = parse_engine_url(url)
    assert (address.scheme, address.host, address.port, address.path) == (scheme, host, port, path)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://10.0.0.1:2375", "scheme must be one of"),
        ("10.231.0.2:2375", "scheme must be one of"),
        ("tcp://10.231.0.2", "needs a port"),
        ("tcp://10.231.0.2:99999", "port must be a number"),
        ("tcp://:2375", "names no host"),
        ("tcp://h:2375/x", "must not have a path"),
        ("unix://var/run/docker.sock", "unix:///absolute"),
        ("ssh://pi:secret@robot", "no password"),
        ("tcp://a b:2375", "white space"),
        ("tcp://h:2375?x=1", "query"),
    ],
)
def test_bad_urls_say_why(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_engine_url(url)


@given(st.text(max_size=60))
def test_any_text_is_accepted_or_refused_with_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_engine_url(text)


def test_allow_list_by_network_and_name() -> None:
    allowed = ["127.0.0.0/8", "10.231.0.0/24", "robot.lab"]
    assert engine_url_allowed("tcp://10.231.0.2:2375", allowed)
    assert engine_url_allowed("tcp://127.0.0.1:2375", allowed)
    assert engine_url_allowed("ssh://pi@robot.lab", allowed)
    assert engine_url_allowed("unix:///var/run/docker.sock", allowed)
    assert not engine_url_allowed("tcp://10.232.0.2:2375", allowed)
    assert not engine_url_allowed("tcp://other.lab:2375", allowed)
    assert engine_url_allowed("tcp://anything:2375", [])


def test_host_spec_rules() -> None:
    HostSpec(name="robot-1", url="tcp://10.231.0.2:2375", labels={"role": "robot"})
    with pytest.raises(ValidationError, match="host name 'Robot'"):
        HostSpec(name="Robot", url="tcp://10.231.0.2:2375")
    with pytest.raises(ValidationError, match="label key"):
        HostSpec(name="r", url="tcp://10.231.0.2:2375", labels={"bad key": "x"})
    with pytest.raises(ValidationError, match="tls applies only to tcp"):
        HostSpec(
            name="r",
            url="unix:///var/run/docker.sock",
            tls={"ca": "/ca.pem", "cert": "/c.pem", "key": "/k.pem"},
        )
    with pytest.raises(ValidationError, match="Extra inputs"):
        HostSpec.model_validate({"name": "r", "url": "tcp://h:1", "colour": "red"})
