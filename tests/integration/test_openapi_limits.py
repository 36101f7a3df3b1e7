"""The API description says what the server enforces, for the limits schemathesis found
undocumented: a command's kind (an enum) and a token's name (a pattern). Each documented
value is accepted and a value outside it refused, against a real corral."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(home=tmp_path, bootstrap_token=ADMIN, local_docker_url="")
    with ThreadServer(settings) as running:
        yield running


def _schema(api: Any, name: str) -> dict[str, Any]:
    found: dict[str, Any] = api.get("/openapi.json").json()["components"]["schemas"][name]
    return found


def test_a_commands_kind_is_the_documented_enum(server: ThreadServer) -> None:
    with server.client() as api:
        assert api.post("/fleet/robots", json={"name": "r1"}).status_code == 201
        kinds = _schema(api, "CommandRequest")["properties"]["kind"]["enum"]
        assert kinds == ["stop", "resume", "estop", "custom"]
        for kind in kinds:
            answer = api.post("/fleet/robots/r1/commands", json={"kind": kind})
            assert answer.status_code == 201, answer.text
            assert api.post("/fleet/broadcast", json={"kind": kind}).status_code == 200
        assert api.post("/fleet/robots/r1/commands", json={"kind": "launch"}).status_code == 422


def test_a_tokens_name_is_the_documented_pattern(server: ThreadServer) -> None:
    with server.client() as api:
        pattern = _schema(api, "TokenRequest")["properties"]["name"]["pattern"]
        for name, fits in (("ci-bot", True), ("a.b_c-9", True), ("Ci", False), ("-x", False)):
            assert bool(re.search(pattern, name)) is fits
            answer = api.post("/tokens", json={"name": name, "role": "viewer"})
            assert answer.status_code == (201 if fits else 422), answer.text


def test_times_are_rfc_3339_and_any_year_counts(server: ThreadServer) -> None:
    """`until=0.5` was taken as Unix seconds; a utilization window before 1971 was a 422."""
    with server.client() as api:
        assert api.get("/events", params={"until": "0.5"}).status_code == 422
        assert api.get("/events", params={"until": "2026-01-01T00:00:00Z"}).status_code == 200
        window = {"from": "1732-05-27T03:07:23Z", "to": "2026-01-01T00:00:00Z"}
        answer = api.get("/farm/utilization", params=window)
        assert answer.status_code == 200, answer.text


def test_json_types_are_the_documented_ones(server: ThreadServer) -> None:
    """0 is not a boolean and false not a number (both were taken); 246.0 is an integer
    (it was refused)."""
    with server.client() as api:
        assert api.put("/farm", json={"prune": 0}).status_code == 422
        assert api.put("/hosts", json={"hosts": [], "prune": 0}).status_code == 422
        assert api.put("/farm/racks/A", json={"position": False}).status_code == 422
        answer = api.put("/farm/racks/A", json={"position": 1, "slots": 4.0})
        assert answer.status_code == 200, answer.text
        answer = api.post("/fleet/robots", json={"name": "r2", "priority": 246.0})
        assert answer.status_code == 201, answer.text


def test_a_new_printer_is_a_documented_201(server: ThreadServer) -> None:
    with server.client() as api:
        documented = api.get("/openapi.json").json()["paths"]["/farm/printers/{id}"]["put"]
        assert "201" in documented["responses"]
        assert api.put("/farm/printers/p1", json={"bed_type": "pei"}).status_code == 201
        assert api.put("/farm/printers/p1", json={"bed_type": "pei"}).status_code == 200


def test_a_beds_rack_and_slot_go_together_in_the_schema(server: ThreadServer) -> None:
    with server.client() as api:
        together = _schema(api, "BedSpec")["anyOf"]
        assert {"required": ["rack", "slot"]}.items() <= together[0].items()
        assert api.put("/farm/racks/A", json={}).status_code == 200
        assert api.put("/farm/beds/b1", json={"type": "pei", "rack": "A"}).status_code == 422
        answer = api.put("/farm/beds/b1", json={"type": "pei", "rack": "A", "slot": 2})
        assert answer.status_code == 200, answer.text


def test_host_names_and_label_keys_are_documented_patterns(server: ThreadServer) -> None:
    with server.client() as api:
        labels = _schema(api, "HostBody")["properties"]["labels"]
        assert labels["additionalProperties"] is False
        [key_pattern] = labels["patternProperties"]
        name_pattern = _schema(api, "HostSpec")["properties"]["name"]["pattern"]
        assert re.search(name_pattern, "robot")
        assert not re.search(name_pattern, "Robot")
        assert re.search(key_pattern, "zone")
        assert not re.search(key_pattern, "\x1f")
        host = {"url": "tcp://127.0.0.1:9", "labels": {"\x1f": ""}}
        assert api.put("/hosts/h1", json=host).status_code == 422


def test_an_engine_outside_the_allowed_networks_is_refused_by_policy(tmp_path: Path) -> None:
    """The server's configuration refuses it, not the request's shape: 403, not 422."""
    settings = Settings(
        home=tmp_path, bootstrap_token=ADMIN, local_docker_url="", engine_networks=["127.0.0.0/8"]
    )
    with ThreadServer(settings) as server, server.client() as api:
        answer = api.post("/hosts", json={"name": "far", "url": "tcp://192.0.2.9:2375"})
        assert answer.status_code == 403, answer.text
        assert "allowed engine networks" in answer.json()["error"]["message"]


def test_error_answers_are_documented_as_json(server: ThreadServer) -> None:
    """A plain-text route documented its 401 as text/plain; it is JSON like every error."""
    with server.client(token=None) as api:
        acl = api.get("/openapi.json").json()["paths"]["/fleet/vda5050/mosquitto-acl"]["get"]
        assert list(acl["responses"]["401"]["content"]) == ["application/json"]
        answer = api.get("/fleet/vda5050/mosquitto-acl")
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/json"


def _operation(api: Any, method: str, path: str) -> dict[str, Any]:
    found: dict[str, Any] = api.get("/openapi.json").json()["paths"][path][method]
    return found


def test_a_robots_http_bodies_are_documented_and_held_to_it(server: ThreadServer) -> None:
    """The channel's bodies were undocumented; an empty telemetry was a 204 and an ack of
    7.0 (a JSON integer) a 422."""
    with server.client() as api:
        made = api.post("/fleet/robots", json={"name": "r3"})
        assert made.status_code == 201, made.text
        for route in ("telemetry", "checkpoint", "acks"):
            body = _operation(api, "post", f"/fleet/robots/{{name}}/{route}")["requestBody"]
            assert body["required"] is True
            assert body["content"]["application/json"]["schema"]["type"] == "object"
    with server.client(token=made.json()["token"]) as robot:
        assert robot.post("/fleet/robots/r3/telemetry").status_code == 422
        assert robot.post("/fleet/robots/r3/telemetry", json={"battery": 50}).status_code == 204
        assert robot.post("/fleet/robots/r3/acks", json={"ids": [7.0]}).status_code == 404


def test_a_device_registration_takes_what_its_schema_says(server: ThreadServer) -> None:
    """port 5000.0 was refused; a host of {} was taken; an address outside device_networks
    is this server's policy (403)."""
    with server.client() as api:
        schema = _operation(api, "post", "/file/device/discovery/register")["requestBody"]
        registration = schema["content"]["application/json"]["schema"]
        assert registration["additionalProperties"] is False
        assert "pattern" in registration["properties"]["name"]
        device = {"name": "d1", "host": "127.0.0.1", "port": 5000.0}
        answer = api.post("/file/device/discovery/register", json=device)
        assert answer.status_code == 204, answer.text
        bad = {"name": "d2", "host": {}}
        assert api.post("/file/device/discovery/register", json=bad).status_code == 422
        for properties in ({"address": 7}, {"path": 7}):  # were taken, ignored or as "7"
            bad = {"name": "d3", "host": "127.0.0.1", "properties": properties}
            assert api.post("/file/device/discovery/register", json=bad).status_code == 422


def test_state_not_shape_is_a_404_or_409(server: ThreadServer) -> None:
    """Refusals that depend on what exists now, which no schema can state, were 422s."""
    with server.client() as api:
        task = {"kind": "homing", "target": "robot_arm"}
        assert api.post("/tasks", json=task).status_code == 404
        assert api.post("/fleet/robots", json={"name": "r4"}).status_code == 201
        mission = api.post("/fleet/missions", json={"robot": "r4", "goal": "A"})
        assert mission.status_code == 409, mission.text
        assert api.put("/farm/racks/R", json={"slots": 2}).status_code == 200
        bed = api.put("/farm/beds/b9", json={"type": "pei", "rack": "R", "slot": 5})
        assert bed.status_code == 409, bed.text
        started = api.post("/fleet/mapping", json={"robot": "r4", "map": "m4"})
        assert started.status_code == 201, started.text
        done = api.post("/fleet/mapping/r4/finish", json={"diameter": 2})
        assert done.status_code == 409, done.text


def test_a_hosts_url_and_transport_are_in_the_schema(server: ThreadServer) -> None:
    """The URL's grammar and ssh-only-with-ssh:// were unstated; a bad URL's message was
    pydantic's link ("For further information visit ..."); a new host's 201 undocumented."""
    with server.client() as api:
        spec = _schema(api, "HostBody")
        pattern = spec["properties"]["url"]["pattern"]
        assert re.search(pattern, "tcp://127.0.0.1:2375")
        assert not re.search(pattern, "tcp://127.0.0.1:99999")
        assert "allOf" in spec
        assert "201" in _operation(api, "put", "/hosts/{name}")["responses"]
        answer = api.put("/hosts/h2", json={"url": "tcp://127.0.0.1:99999"})
        assert answer.status_code == 422
        message = answer.json()["error"]["message"]
        assert "url" in message
        assert "errors.pydantic.dev" not in message


def test_go1_answers_are_documented(server: ThreadServer) -> None:
    with server.client() as api:
        responses = _operation(api, "post", "/stop/")["responses"]
        assert {"200", "409", "502"} <= set(responses)
        failed = responses["409"]["content"]["application/json"]["schema"]["$ref"]
        assert failed.endswith("/Go1Failed")


def test_an_ack_of_an_id_past_the_databases_integers_is_a_422(server: ThreadServer) -> None:
    """An id of 10**30 reached the database and answered 500."""
    with server.client() as api:
        made = api.post("/fleet/robots", json={"name": "r5"})
        assert made.status_code == 201, made.text
        ids = _operation(api, "post", "/fleet/robots/{name}/acks")["requestBody"]
        item = ids["content"]["application/json"]["schema"]["properties"]["ids"]["items"]
        assert item["maximum"] == 2**53
    with server.client(token=made.json()["token"]) as robot:
        answer = robot.post(
            "/fleet/robots/r5/acks", content=b'{"ids": [1000000000000000000000000000000]}'
        )
        assert answer.status_code == 422, answer.text


def test_a_mission_to_a_marker_off_its_map_is_a_404(server: ThreadServer) -> None:
    corridor = {
        "name": "corridor",
        "markers": [{"id": "A", "x": 0, "y": 0}, {"id": "B", "x": 2, "y": 0}],
        "lanes": [["A", "B"]],
    }
    with server.client() as api:
        assert api.post("/fleet/maps", json=corridor).status_code == 201
        robot = {"name": "r6", "map": "corridor", "marker": "A"}
        assert api.post("/fleet/robots", json=robot).status_code == 201
        answer = api.post("/fleet/missions", json={"robot": "r6", "goal": "Z"})
        assert answer.status_code == 404, answer.text


def test_numbers_of_tasks_and_sessions_are_as_documented(server: ThreadServer) -> None:
    """A task's priority "5" and timeout true were taken; a session's ttl 0.5 was a 422 the
    schema (ttl > 0) did not announce."""
    with server.client() as api:
        ttl = _schema(api, "SessionRequest")["properties"]["ttl"]["anyOf"][0]
        assert ttl["minimum"] == 1
        for bad in ({"priority": "5"}, {"timeout": True}):
            task = {"kind": "goto", "target": "fleet", "params": {"marker": "B"}, **bad}
            assert api.post("/tasks", json=task).status_code == 422


def test_a_queued_session_is_a_documented_202(server: ThreadServer) -> None:
    echo = "x-corral-template:\n  name: echo\nservices:\n  echo:\n    image: local/busybox:1\n"
    with server.client() as api:
        assert api.post("/templates", json={"file": echo}).status_code == 201
        responses = _operation(api, "post", "/templates/{name}/sessions")["responses"]
        assert "202" in responses
        queued = api.post("/templates/echo/sessions", json={"queue": True})
        assert queued.status_code == 202, queued.text
        assert api.delete(f"/sessions/{queued.json()['id']}").status_code in (200, 204)
