"""Read shapes of stored resources, returned by the store and served by the API.

Pydantic models so that one definition gives validation, JSON and the OpenAPI schema.
"""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.model.hosts import EngineFacts, TlsFiles

Role = Literal["admin", "operator", "viewer", "robot", "device"]
ROLES: tuple[Role, ...] = ("admin", "operator", "viewer", "robot", "device")


class HostView(BaseModel):
    """A host as corral knows it: the spec, then the last observation."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    url: str
    labels: dict[str, str]
    tls: TlsFiles | None = None
    reachable: bool | None = Field(description="None until the first check.")
    state_since: datetime | None = Field(description="Since when `reachable` has held.")
    last_checked: datetime | None
    last_error: str = ""
    facts: EngineFacts | None = Field(default=None, description="From the last good check.")
    created_at: datetime
    updated_at: datetime


class TokenView(BaseModel):
    """A token's record; the secret itself is never shown again after creation."""

    id: int
    name: str
    role: Role
    prefix: str = Field(description="First characters of the token, to tell tokens apart.")
    subject: str = Field(default="", description="Robot or device the token is bound to.")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    active: bool


class EventView(BaseModel):
    """One state change: what happened, to which resource, when."""

    id: int
    time: datetime
    kind: str = Field(examples=["host.unreachable"])
    resource: str = Field(examples=["host/robot"])
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class SlotView(BaseModel):
    """One replica of one service: its host, container and state."""

    service: str
    replica: int
    host: str = Field(description="Empty while no host is chosen.")
    container_id: str
    container: str = Field(description="The container's name on its host.")
    state: str = Field(description="pending, created, running, restarting, exited, stopped, ...")
    health: str = ""
    reason: str = Field(default="", description="Why it is pending or failed.")
    exit_code: int = 0
    updated_at: datetime


class StackView(BaseModel):
    name: str
    services: list[str]
    stopped_services: list[str]
    slots: list[SlotView]
    state: str = Field(description="running, partial, pending, stopped or empty.")
    created_at: datetime
    updated_at: datetime


class ParameterView(BaseModel):
    name: str
    type: Literal["int", "bool", "str"]
    default: int | bool | str | None = Field(description="None: the parameter is required.")
    min: int | None = None
    max: int | None = None
    choices: list[str] = Field(default_factory=list)
    description: str = ""


class TemplateView(BaseModel):
    name: str
    description: str
    parameters: list[ParameterView]
    services: list[str]
    cpus: float = Field(description="CPUs a session reserves on its host.")
    memory: int = Field(description="Bytes of memory a session reserves on its host.")
    ttl_s: float = Field(description="Default lifetime of a session.")
    base_dir: str
    created_at: datetime
    updated_at: datetime


SessionState = Literal[
    "pending", "starting", "running", "completed", "failed", "expired", "cancelled"
]
ACTIVE_STATES: tuple[SessionState, ...] = ("pending", "starting", "running")
FINAL_STATES: tuple[SessionState, ...] = ("completed", "failed", "expired", "cancelled")


class Endpoint(BaseModel):
    """Where a client connects: a service's port, published on the session's host."""

    service: str
    port: int = Field(description="The container's port.")
    protocol: str = "tcp"
    address: str = Field(description="The host's address clients use.")
    host_port: int


class SessionContainerView(BaseModel):
    service: str
    name: str
    container_id: str
    state: str = Field(description="pending, created, running, exited, removed.")
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None


class SessionView(BaseModel):
    id: str
    template: str
    params: dict[str, Any]
    host: str = Field(description="Empty while queued.")
    network: str
    state: SessionState
    reason: str = Field(default="", description="Why it is pending, failed or ended.")
    cpus: float
    memory: int
    endpoints: list[Endpoint]
    containers: list[SessionContainerView]
    created_at: datetime
    started_at: datetime | None
    running_at: datetime | None
    ended_at: datetime | None
    expires_at: datetime | None
    cleaned_at: datetime | None = Field(description="When its containers and network went.")
