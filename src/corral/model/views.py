"""Read shapes of stored resources, returned by the store and served by the API.

Pydantic models so that one definition gives validation, JSON and the OpenAPI schema.
"""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.model.hosts import EngineFacts, SshOptions, TlsFiles

Role = Literal["admin", "operator", "viewer", "robot", "device"]
ROLES: tuple[Role, ...] = ("admin", "operator", "viewer", "robot", "device")


class HostView(BaseModel):
    """A host as corral knows it: the spec, then the last observation."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    url: str
    labels: dict[str, str]
    tls: TlsFiles | None = None
    ssh: SshOptions | None = None
    insecure: bool = Field(
        default=False, description="Accepted unencrypted (plain tcp://) or unverified TLS."
    )
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

    model_config = ConfigDict(from_attributes=True)

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
    state: str = Field(
        description="running, partial, pending, stopped or empty; removing once `down` "
        "left containers on hosts that did not answer (see pending_removal)."
    )
    created_at: datetime
    updated_at: datetime
    mode: Literal["containers", "swarm"] = Field(
        default="containers",
        description="containers: corral runs each replica; swarm: swarm services run them.",
    )
    pending_removal: dict[str, str] = Field(
        default_factory=dict,
        description="Hosts (and why) where `down` could not remove the stack's containers: "
        "removed when they answer again.",
    )


class ParameterView(BaseModel):
    name: str
    type: Literal["int", "bool", "str"]
    default: int | bool | str | None = Field(description="None: the parameter is required.")
    min: int | None = None
    max: int | None = None
    choices: list[str] = Field(default_factory=list)
    description: str = ""
    render: str = Field(
        default="lower", description="bool only: lower (true/false), python (True/False), number"
    )


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
    "pending", "starting", "running", "completed", "failed", "expired", "cancelled", "unknown"
]
ACTIVE_STATES: tuple[SessionState, ...] = ("pending", "starting", "running")
# Shown, never stored: an active session whose host does not answer (the reason says which
# state it was in); the monitor finds out what became of it when the host answers again.
UNKNOWN: SessionState = "unknown"


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


class BrokerView(BaseModel):
    name: str
    kind: Literal["amqp", "mqtt"] | str
    url: str = Field(description="Without its password.")
    connected: bool
    since: datetime | None = Field(description="Since when `connected` has held.")
    last_error: str = ""
    reconnects: int = Field(description="Times it came back after a loss.")


TaskState = Literal["queued", "assigned", "running", "done", "failed", "cancelled"]
OPEN_TASK_STATES: tuple[TaskState, ...] = ("queued", "assigned", "running")


class TaskView(BaseModel):
    id: int
    kind: str = Field(examples=["take", "replace", "homing"])
    target: str = Field(description="Who does it, e.g. robot_arm.")
    params: dict[str, Any]
    priority: int = Field(description="Higher first; equal ones in order of creation.")
    state: TaskState
    reason: str = ""
    timeout_s: float
    source: str = Field(description="What made it: a trigger, a REST call, a retry.")
    attempts: int
    created_at: datetime
    assigned_at: datetime | None
    sent_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class PrinterView(BaseModel):
    id: str
    state: Literal["idle", "printing", "finished", "error"]
    door: str
    bed_type: str
    bed: str | None = Field(description="The bed in the printer.")
    position: float = Field(description="Place along the arm's reach, for the nearest bed.")
    updated_at: datetime


class RackView(BaseModel):
    id: str
    position: float
    slots: int


class BedView(BaseModel):
    id: str
    type: str
    state: Literal["clean", "with_part", "dirty"]
    printer: str | None
    rack: str | None
    slot: int | None
    reserved_for: str | None = Field(description="The printer a replace job holds it for.")


class UsageView(BaseModel):
    printer: str
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    busy_s: float = Field(description="Seconds printing.")
    idle_s: float = Field(description="Seconds in any other known state.")
    utilization: float = Field(description="busy / (busy + idle); 0 with no data.")
    by_state: dict[str, float]

    model_config = ConfigDict(populate_by_name=True)


class TriggerView(BaseModel):
    name: str
    source: str = Field(examples=["amqp ready", "mqtt robot/+/done", "schedule 0 21 * * *"])
    action: str
    fired: int = Field(description="Times it fired since corral started.")
    last_fired: datetime | None
    last_error: str = ""
    next_fire: datetime | None = Field(default=None, description="For schedules.")


class DeviceView(BaseModel):
    """A Wasm device: where it answers, what it described, its health and status log."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    addresses: list[str]
    port: int
    path: str
    tls: bool
    source: str
    description: dict[str, Any] | None
    status: str
    blacklisted: bool
    ok_checks: int
    failed_checks: int
    status_log: list[dict[str, Any]]
    health: dict[str, Any] | None
    last_error: str
    created_at: datetime
    updated_at: datetime


class ModuleView(BaseModel):
    """One stored version of a Wasm module, without its bytes (`size` says how many)."""

    id: str
    name: str
    sha256: str
    size: int
    exports: list[dict[str, Any]]
    requirements: list[dict[str, str]]
    functions: dict[str, dict[str, Any]]
    files: dict[str, dict[str, Any]]
    created_at: datetime


class DeploymentView(BaseModel):
    """A deployment: its manifest, placed steps, each device's part and answer, its state."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    sequence: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    parts: dict[str, Any]
    responses: dict[str, Any]
    state: str
    reason: str
    created_at: datetime
    updated_at: datetime
