"""A Docker engine driver once closed opens no new connection (a call still running in a
worker thread at shutdown would otherwise leave one open), while a failed probe only
drops its connections and the next probe connects afresh."""

import socket

import pytest

from corral.errors import Unreachable
from corral.hosts.docker_engine import DockerEngine
from corral.model.hosts import HostSpec


def _refusing_url() -> str:
    """A loopback TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def test_a_failed_probe_reconnects_next_time() -> None:
    engine = DockerEngine(HostSpec(name="gone", url=_refusing_url()), timeout=1)
    for _ in range(2):
        with pytest.raises(Unreachable) as refused:
            engine.probe()
        assert "closed" not in refused.value.message
    engine.close()


def test_a_closed_engine_opens_no_new_client() -> None:
    engine = DockerEngine(HostSpec(name="done", url=_refusing_url()), timeout=1)
    engine.close()
    with pytest.raises(Unreachable, match="connection is closed"):
        engine.probe()
    assert engine._clients == {}
