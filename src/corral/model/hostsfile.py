"""The hosts file: a declarative list of Docker engines, the Go1 seed's DOCKER_CLIENTS.

`hosts:` maps each name to a URL string or to `{url, labels, tls}`; errors name the line.
"""

from typing import Any

from pydantic import ValidationError

from corral.model.hosts import HostSpec
from corral.model.yamlfile import FileInvalid, Problem, load_located


def parse_hosts_file(text: str, source: str = "hosts file") -> list[HostSpec]:
    """Parse and validate a hosts file; raise FileInvalid listing every problem."""
    doc = load_located(text, source)
    if not isinstance(doc.data, dict) or set(doc.data) - {"hosts"}:
        extra = sorted(set(doc.data) - {"hosts"}) if isinstance(doc.data, dict) else []
        where = doc.line_of((extra[0],)) if extra else 1
        what = f"unknown key {extra[0]!r}" if extra else "expected a mapping with a 'hosts' key"
        raise FileInvalid(source, [Problem(extra[0] if extra else "", where, what)])
    hosts = doc.data.get("hosts") or {}
    if not isinstance(hosts, dict):
        raise FileInvalid(
            source, [Problem("hosts", doc.line_of(("hosts",)), "expected a mapping of names")]
        )
    specs: list[HostSpec] = []
    problems: list[Problem] = []
    for name, value in hosts.items():
        body: dict[str, Any] = {"url": value} if isinstance(value, str) else value
        if not isinstance(body, dict):
            line = doc.line_of(("hosts", name))
            problems.append(Problem(f"hosts.{name}", line, "expected a URL or a mapping"))
            continue
        if "name" in body:
            line = doc.line_of(("hosts", name, "name"))
            problems.append(Problem(f"hosts.{name}.name", line, "the name is the key above"))
            continue
        try:
            specs.append(HostSpec.model_validate({"name": name, **body}))
        except ValidationError as exc:
            problems.extend(doc.problems_from(exc, ("hosts", name)))
    if problems:
        raise FileInvalid(source, problems)
    return specs
