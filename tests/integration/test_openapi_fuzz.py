"""Schemathesis over corral's API and the seed APIs' ports, with the token of every role:
the API description must say what the server does, and the server what it says.

Checks: no 5xx, documented statuses, content types and bodies, schema-violating input
refused, schema-valid input accepted. Phases: the examples in the description, coverage,
fuzzing, and (as the admin) the stateful phase following the description's links. Seeded
by CORRAL_FUZZ_SEED (default 1); a failure names the seed and the command that repeats it.
Every URL a request may make corral contact is held to loopback.
"""

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from tests.support.processes import free_port
from tests.support.server import ADMIN
from tests.support.wasmiot_orchestrator import Orchestrator

from corral.api.compat.edgeecho import create_edgeecho_app
from corral.api.compat.wasmiot import create_wasmiot_app
from corral.core import Core

SEED = int(os.environ.get("CORRAL_FUZZ_SEED", "1"))
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "positive_data_acceptance",
    )
)
ROBOT, DEVICE = "fuzzbot", "fuzzdev"
GO1_STACK = "services:\n  web:\n    image: local/busybox:1\n    command: sleep 600\n"
# Revoking a token would revoke the fuzzer's own: that operation runs last, alone.
REVOKE = "revoke_token_tokens__token_id__delete"

# Request bodies that carry a whole document: a compose file or a map (YAML text), a Wasm
# binary, a log record (JSON text), a farm or hosts file, a manifest (records that must
# exist, ids listed once, free slots). JSON Schema describes the envelope, not what the
# document says, so a schema-valid request may still be refused with a 422 naming the
# problem (400 on the Wasm-IoT port, as the orchestrator answers bad input).
DOCUMENTS = (
    "POST /stacks",
    "POST /stacks/validate",
    "POST /templates",
    "POST /fleet/maps",
    "POST /file/module",
    "POST /device/logs",
    "PUT /farm",
    "PUT /hosts",
    "POST /file/manifest",
    "PUT /file/manifest/{ref}",
    # a task's params are its executor's and kind's; a session's params its template's
    "POST /tasks",
    "POST /templates/{name}/sessions",
)
# Parameters related to each other, which JSON Schema cannot state: `to` after `from`.
RELATIONS = ("GET /farm/utilization", "GET /farm/printers/{id}/utilization")


@dataclass
class Corral:
    server: Orchestrator
    edgeecho: str
    work: Path


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corral]:
    work = tmp_path_factory.mktemp("fuzz")
    (work / "go1.yml").write_text(GO1_STACK)
    edgeecho_port = free_port()
    server = Orchestrator(
        work / "home",
        anonymous=False,
        mdns_enabled=False,
        # (No host at all, as Orchestrator sets it: generated stacks are parsed, checked and
        # stored, but nothing can be placed, so no generated container reaches an engine.)
        # Generated URLs may only reach loopback: nothing else is ever contacted.
        engine_networks=["127.0.0.0/8", "localhost"],
        device_networks=["127.0.0.0/8", "localhost"],
        host_timeout_seconds=1.0,
        edgeecho_port=edgeecho_port,
        go1_file=work / "go1.yml",
    )
    with server:
        yield Corral(server, f"http://127.0.0.1:{edgeecho_port}", work)


def _token(corral: Corral, role: str) -> str:
    if role == "admin":
        return ADMIN
    with corral.server.client() as api:
        if role == "robot":
            made = api.post("/fleet/robots", json={"name": ROBOT})
        else:
            name = DEVICE if role == "device" else f"fuzz-{role}"
            made = api.post("/tokens", json={"name": name, "role": role})
        assert made.status_code == 201, made.text
        token: str = made.json()["token"]
        return token


def _config(work: Path, token: str, role: str) -> Path:
    """The run's schemathesis.toml: the token, the fixed path names a robot's or a device's
    token may reach, and the document-carrying operations' extra 422."""
    lines = [
        f"headers = {{ Authorization = {json.dumps('Bearer ' + token)} }}",
        # schemathesis' own lists, with 413: a body past max_body_bytes is refused before it
        # is read, documented on every operation (a limit in bytes, which JSON Schema's
        # lengths in characters cannot state)
        "[checks.positive_data_acceptance]",
        'expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]',
        "[checks.negative_data_rejection]",
        "expected-statuses = "
        '["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429",'
        ' "5xx"]',
    ]
    if role in ("robot", "device"):
        # its own name; and no long poll, in which a robot waits up to 30 s for commands
        name = ROBOT if role == "robot" else DEVICE
        lines += ["[parameters]", f'"path.name" = {json.dumps(name)}', '"query.wait" = 0']
    for operation in DOCUMENTS + RELATIONS:
        lines += [
            "[[operations]]",
            f"include-name = {json.dumps(operation)}",
            "checks.positive_data_acceptance.expected-statuses = "
            '["2xx", "3xx", "400", "401", "403", "404", "409", "413", "422", "429", "5xx"]',
        ]
    path = work / f"schemathesis-{role}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(corral: Corral, what: str, schema: str, *options: str, role: str = "admin") -> None:
    """One schemathesis run; fails with its report, the seed and how to repeat it."""
    config = _config(corral.work, _token(corral, role), role)
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        schema,
        "--checks",
        CHECKS,
        "--seed",
        str(SEED),
        "--no-color",
        "--max-failures",
        "50",
        *options,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, cwd=corral.work
    )
    report = done.stdout + done.stderr
    saved = corral.work / f"report-{role}-{'-'.join(what.split()[-2:])}.txt"
    saved.write_text(report)
    if done.returncode != 0 or "FAILURES" in report:
        failures = report[report.find("FAILURES") :] if "FAILURES" in report else report
        raise AssertionError(
            f"schemathesis found problems in {what} as {role} (seed {SEED}; whole report in "
            f"{saved}); repeat with\n  CORRAL_FUZZ_SEED={SEED} .venv/bin/pytest "
            f"-p no:cacheprovider tests/integration/test_openapi_fuzz.py\n\n{failures[-12000:]}"
        )


def _write_schema(corral: Corral, name: str, schema: dict[str, Any]) -> str:
    path = corral.work / f"{name}.json"
    path.write_text(json.dumps(schema))
    return str(path)


@pytest.mark.parametrize("role", ["viewer", "operator", "robot", "device"])
def test_the_api_as_each_role(corral: Corral, role: str) -> None:
    _run(
        corral,
        "corral's API",
        f"{corral.server.url}/openapi.json",
        # what this role may do is the point; the admin's run covers the rest in depth
        "--max-examples",
        "5",
        "--phases",
        "examples,fuzzing",
        "--exclude-path",
        "/events/stream",
        "--exclude-path",
        "/fleet/stream",  # endless too; its refusals are in test_fleet_replicas
        "--exclude-operation-id",
        REVOKE,
        role=role,
    )


def test_the_api_as_the_admin(corral: Corral) -> None:
    _run(
        corral,
        "corral's API",
        f"{corral.server.url}/openapi.json",
        "--max-examples",
        "20",
        "--exclude-path",
        "/events/stream",
        "--exclude-path",
        "/fleet/stream",  # endless too; its refusals are in test_fleet_replicas
        "--exclude-operation-id",
        REVOKE,
    )


@pytest.mark.parametrize(
    ("port", "create", "what"),
    [
        ("wasmiot", create_wasmiot_app, "the Wasm-IoT port"),
        ("edgeecho", create_edgeecho_app, "the edgeECHO port"),
    ],
    ids=["wasmiot", "edgeecho"],
)
def test_a_seed_port(
    corral: Corral, port: str, create: Callable[[Core], FastAPI], what: str
) -> None:
    assert corral.server.core is not None
    schema = create(corral.server.core).openapi()
    url = corral.server.seed if port == "wasmiot" else corral.edgeecho
    _run(corral, what, _write_schema(corral, port, schema), "--url", url, "--max-examples", "10")


def test_token_revocation_last(corral: Corral) -> None:
    _run(
        corral,
        "token revocation",
        f"{corral.server.url}/openapi.json",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "20",
        "--include-operation-id",
        REVOKE,
    )
