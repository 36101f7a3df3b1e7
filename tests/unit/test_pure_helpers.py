"""Small pure pieces: engine facts from `docker info`, event filters, CLI parsers.

No services involved.
"""

from datetime import UTC, datetime

import pytest

from corral.cli.main import global_flags_first
from corral.cli.tokens import parse_duration
from corral.exits import CliError
from corral.hosts.docker_engine import facts_from_info
from corral.hosts.ssh_tunnel import _plain_words
from corral.model.events import EventFilter
from corral.model.names import parse_label_args
from corral.model.views import EventView


def test_facts_from_info_reads_swarm_role() -> None:
    info = {
        "ServerVersion": "20.10.24",
        "NCPU": 4,
        "MemTotal": 8 << 30,
        "ContainersRunning": 2,
        "Containers": 5,
        "Images": 3,
        "OperatingSystem": "Debian",
        "Architecture": "aarch64",
        "Labels": ["zone=lab", "gpu"],
        "Swarm": {"LocalNodeState": "active", "ControlAvailable": False, "NodeID": "n1"},
        "Name": "robot",
        "ID": "47BA:XCEL:QXVP",
    }
    facts = facts_from_info(info, {"Version": "20.10.24", "ApiVersion": "1.41"})
    assert facts.swarm_role == "worker"
    assert facts.engine_id == "47BA:XCEL:QXVP"
    assert (facts.cpus, facts.containers_running, facts.containers_total) == (4, 2, 5)
    assert facts.engine_labels == {"zone": "lab", "gpu": ""}
    info["Swarm"] = {"LocalNodeState": "inactive"}
    assert facts_from_info(info, {}).swarm_role == "none"


def test_json_is_accepted_after_the_command() -> None:
    assert global_flags_first(["host", "ls", "--json"]) == ["--json", "host", "ls"]
    assert global_flags_first(["--json", "host", "ls"]) == ["--json", "host", "ls"]
    assert global_flags_first(["host", "ls"]) == ["host", "ls"]
    # After `--` it is an argument, not the option.
    assert global_flags_first(["x", "--", "--json"]) == ["x", "--", "--json"]


def _event(kind: str, resource: str, event_id: int = 1) -> EventView:
    return EventView(
        id=event_id, time=datetime.now(UTC), kind=kind, resource=resource, message="m", data={}
    )


def test_event_filter_prefixes() -> None:
    assert EventFilter(kind="host.*").matches(_event("host.unreachable", "host/robot"))
    assert not EventFilter(kind="host.added").matches(_event("host.unreachable", "host/robot"))
    assert EventFilter(resource="host/robot").matches(_event("host.added", "host/robot"))
    assert not EventFilter(after_id=5).matches(_event("x", "y", event_id=5))


def test_durations_and_labels() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("15m") == 900
    with pytest.raises(CliError, match="duration"):
        parse_duration("soon")
    assert parse_label_args(["role=robot", "zone=a=b"]) == {"role": "robot", "zone": "a=b"}
    with pytest.raises(ValueError, match="key=value"):
        parse_label_args(["role"])


def test_ssh_complaints_in_plain_words() -> None:
    unknown = _plain_words(
        "Host key verification failed.\n", "corral@robot", "/s.sock", 2222, None, "/k/known"
    )
    assert "ssh host key of corral@robot (port 2222) is not in /k/known (the known_hosts" in unknown
    assert "`ssh-keyscan -p 2222 robot >> /k/known`" in unknown
    assert "`ssh -p 2222 corral@robot true`" in unknown
    changed = _plain_words(
        "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\n", "r", "/s", 2222, None, "/k"
    )
    assert "`ssh-keygen -R '[r]:2222' -f /k`" in changed
    refused = _plain_words(
        "channel 1: open failed: administratively prohibited: open failed\n", "r", "/s", 22
    )
    assert "refuses to forward to /s" in refused
    assert "AllowStreamLocalForwarding" in refused
    denied = "x\nroot@r: Permission denied (publickey).\n"
    no_key = _plain_words(denied, "root@r", "/s", 22)
    assert no_key.startswith("the ssh server of root@r refused every key offered (Permission")
    assert "--ssh-identity KEY" in no_key
    wrong_key = _plain_words(denied, "root@r", "/s", 22, "/keys/robot")
    assert wrong_key.startswith("the ssh server of root@r refused the host's identity file")
    other = _plain_words("x\nssh: connect to host r port 22: Connection refused\n", "r", "/s", 22)
    assert other == "ssh: connect to host r port 22: Connection refused"
