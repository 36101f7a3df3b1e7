"""What a host is: a Docker engine endpoint with labels, and what corral observed of it.

Specs are validated here (URL schemes, TLS files, the engine-address allow-list) so that
the API, the hosts file and the CLI give the same answer for the same mistake.
"""

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator
from pydantic.config import JsonDict

from corral.model.names import NAME_SCHEMA, check_labels, check_name, labels_schema

SCHEMES = ("unix", "tcp", "ssh")
MAX_LABELS = 64  # labels a host may have
SwarmRole = Literal["manager", "worker", "none"]


class TlsFiles(BaseModel):
    """Client certificate files for a `tcp://` engine with `--tlsverify`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca: str = Field(min_length=1, max_length=4096, description="CA certificate (PEM) path.")
    cert: str = Field(min_length=1, max_length=4096, description="Client certificate path.")
    key: str = Field(min_length=1, max_length=4096, description="Client key path.")
    verify: bool = Field(default=True, description="Verify the engine's certificate.")


class SshOptions(BaseModel):
    """How an `ssh://` engine is reached beyond its URL (user and port are in the URL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    identity: str | None = Field(
        default=None, min_length=1, max_length=4096, description="Private key file (ssh -i)."
    )
    socket: str = Field(
        default="/var/run/docker.sock",
        min_length=2,
        max_length=4096,
        pattern=r"^/\S*$",
        description="The engine's socket on the remote machine (rootless Docker: "
        "/run/user/UID/docker.sock).",
    )


_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_NAME = r"[A-Za-z0-9._~%!$&'()*+,;=-]+"  # a URL's host or user name, in ASCII
_HOST = _NAME  # an IPv6 literal ([::1]) is taken too, though left out of the pattern
_PATH = r"[\x21\x22\x24-\x3e\x40-\x7e]+"  # printable ASCII but '#' and '?'
# What parse_engine_url accepts, as a pattern for the API description.
ENGINE_URL_PATTERN = (
    rf"^(unix:///{_PATH}|tcp://{_HOST}:{_PORT}/?|ssh://({_NAME}@)?{_HOST}(:{_PORT})?/?)$"
)
URL_NOTE = "unix:///PATH, tcp://HOST:PORT or ssh://[USER@]HOST[:PORT]; also [IPv6] hosts."
# tls only with tcp://, ssh only with ssh:// (the schema says so; _tls_only_on_tcp checks).
TRANSPORT_WITH_SCHEME: JsonDict = {
    "allOf": [
        {
            "anyOf": [
                {"properties": {"ssh": {"type": "null"}}},
                {"properties": {"url": {"pattern": "^ssh://"}}},
            ]
        },
        {
            "anyOf": [
                {"properties": {"tls": {"type": "null"}}},
                {"properties": {"url": {"pattern": "^tcp://"}}},
            ]
        },
    ]
}


class HostSpec(BaseModel):
    """The desired host: how to reach the engine and the labels placement matches on."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=TRANSPORT_WITH_SCHEME)

    name: str = Field(
        min_length=1, max_length=63, examples=["robot"], json_schema_extra=NAME_SCHEMA
    )
    url: str = Field(
        min_length=1,
        max_length=2048,
        examples=["tcp://10.231.0.2:2375"],
        json_schema_extra={"pattern": ENGINE_URL_PATTERN},
        description=URL_NOTE,
    )
    labels: dict[str, str] = Field(
        default_factory=dict, max_length=MAX_LABELS, json_schema_extra=labels_schema()
    )
    tls: TlsFiles | None = None
    ssh: SshOptions | None = None
    insecure: StrictBool = Field(
        default=False,
        description="Accept a plain tcp:// engine off this machine, or TLS with verify: false "
        "(traffic others can read or alter).",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_engine_url(value)
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "host name")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return check_labels(value)

    @model_validator(mode="after")
    def _tls_only_on_tcp(self) -> "HostSpec":
        if self.tls is not None and not self.url.startswith("tcp://"):
            raise ValueError("tls applies only to tcp:// engine URLs")
        if self.ssh is not None and not self.url.startswith("ssh://"):
            raise ValueError("ssh applies only to ssh:// engine URLs")
        return self


@dataclass(frozen=True)
class EngineAddress:
    """A parsed engine URL: scheme plus either a socket path or a host and port."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""
    user: str = ""


def parse_engine_url(url: str) -> EngineAddress:
    """Parse `unix:///path`, `tcp://host:port` or `ssh://[user@]host[:port]`; ValueError if bad."""
    if any(ch.isspace() for ch in url):
        raise ValueError(f"engine URL {url!r} contains white space")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"engine URL {url!r}: scheme must be one of unix://, tcp://, ssh:// "
            f"(got {parts.scheme + '://' if parts.scheme else 'none'})"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"engine URL {url!r} must not have a query or fragment")
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ValueError(f"engine URL {url!r}: use unix:///absolute/path/to/docker.sock")
        return EngineAddress("unix", path=parts.path)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"engine URL {url!r}: port must be a number from 1 to 65535") from None
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"engine URL {url!r} names no host")
    if parts.path not in ("", "/"):
        raise ValueError(f"engine URL {url!r} must not have a path")
    if parts.scheme == "tcp":
        if parts.username or parts.password:
            raise ValueError(f"engine URL {url!r}: tcp:// takes no user name")
        if port is None:
            raise ValueError(f"engine URL {url!r}: tcp:// needs a port (2375, or 2376 with TLS)")
        return EngineAddress("tcp", host=host, port=port)
    if parts.password:
        raise ValueError(f"engine URL {url!r}: put no password in an ssh:// URL; use keys")
    return EngineAddress("ssh", host=host, port=port or 22, user=parts.username or "")


LOOPBACK_NAMES = ("localhost",)


def insecurity(spec: HostSpec) -> str:
    """Why the connection to this engine can be read or altered by others ("" when it
    cannot): plain tcp:// to an address off this machine, or TLS that does not verify."""
    address = parse_engine_url(spec.url)
    if address.scheme != "tcp":
        return ""
    if spec.tls is not None:
        return "" if spec.tls.verify else "TLS with verify: false does not check the engine"
    host = address.host.lower()
    if host in LOOPBACK_NAMES:
        return ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return ""
    except ValueError:
        pass
    return (
        f"plain tcp:// to {address.host} is not encrypted: anyone on the path can read and "
        "drive the engine"
    )


def engine_url_allowed(url: str, allowed: list[str]) -> bool:
    """True when the URL's host is inside the allow-list (CIDRs or exact names); unix always."""
    address = parse_engine_url(url)
    return address.scheme == "unix" or host_allowed(address.host, allowed)


def host_allowed(host: str, allowed: list[str]) -> bool:
    """True when the host (an address or a name) is inside the allow-list; empty: any."""
    if not allowed:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.lower() in {entry.lower() for entry in allowed}
    for entry in allowed:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


@dataclass(frozen=True)
class EngineFacts:
    """What one successful look at an engine told corral."""

    engine_version: str
    api_version: str
    os: str
    arch: str
    cpus: int
    memory_bytes: int
    containers_running: int
    containers_total: int
    images: int
    swarm_role: SwarmRole
    swarm_node_id: str
    engine_labels: dict[str, str] = field(default_factory=dict)
    hostname: str = ""
    engine_id: str = ""  # `docker info`'s ID (from the engine's key.json)
    data_root: str = ""  # `docker info`'s DockerRootDir

    @property
    def identity(self) -> str:
        """What tells engines apart whatever URL reaches them: the ID, which machines cloned
        from one image (or two engines on one machine sharing /etc/docker/key.json) have in
        common, with the data root and the machine's name. Empty when unknown."""
        if not self.engine_id:
            return ""
        return f"{self.engine_id}|{self.data_root}|{self.hostname}"


@dataclass(frozen=True)
class Probe:
    """The outcome of one check: facts when reachable, the error when not."""

    reachable: bool
    checked_at: datetime
    facts: EngineFacts | None = None
    error: str = ""
