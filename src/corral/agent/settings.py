"""The agent's settings, one frozen object built by `corral agent` (or by tests).

Checks each value once, so the rest of the agent can trust them.
"""

import re
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.agent.interfaces import SENSORS

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
WILDCARDS = ("0.0.0.0", "", "::")


def default_name() -> str:
    """The machine's host name, first label only (an mDNS instance name has no dots)."""
    first = socket.gethostname().split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", first).strip("-_")
    return cleaned[:63] or "corral-agent"


def primary_address() -> str:
    """The IPv4 address this machine would use to reach other hosts (nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed, only picks a source
            address: str = probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return address


class AgentSettings(BaseModel):
    """Everything `corral agent` was told; see docs/agent.md for each option."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default_factory=default_name)
    bind: str = "127.0.0.1"
    port: int = Field(default=5000, ge=1, le=65535)
    advertise_address: str | None = None
    home: Path | None = None
    token: str | None = None
    orchestrator: str | None = None
    fuel: int = Field(default=1_000_000_000, ge=1)
    memory_mb: int = Field(default=64, ge=1, le=4096)
    call_timeout: float = Field(default=10.0, gt=0, le=86400)
    sensors: dict[str, float] = Field(default_factory=dict)
    mdns: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                "use 1-63 letters, digits, '-' or '_', starting with a letter or digit"
            )
        return value

    @field_validator("orchestrator")
    @classmethod
    def _orchestrator(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @field_validator("sensors")
    @classmethod
    def _sensors(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(SENSORS))
        if unknown:
            raise ValueError(f"unknown sensor {unknown[0]!r} (known: {', '.join(SENSORS)})")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> "AgentSettings":
        # frozen: fill derived defaults through object.__setattr__ once, at construction
        if self.advertise_address is None:
            advertised = primary_address() if self.bind in WILDCARDS else self.bind
            object.__setattr__(self, "advertise_address", advertised)
        if self.home is None:
            object.__setattr__(self, "home", Path.home() / ".corral-agent" / self.name)
        return self

    @property
    def address(self) -> str:
        assert self.advertise_address is not None  # set by _defaults
        return self.advertise_address

    @property
    def folder(self) -> Path:
        assert self.home is not None  # set by _defaults
        return self.home

    @property
    def base_url(self) -> str:
        """The URL other machines use to reach this agent (from --advertise-address)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    @property
    def mdns_interface(self) -> str:
        """The IPv4 address mDNS runs on: the bind address, else the advertised one."""
        if self.bind not in WILDCARDS and ":" not in self.bind:
            return self.bind
        if self.address not in WILDCARDS and ":" not in self.address:
            return self.address
        return "127.0.0.1"
