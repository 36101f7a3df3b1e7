"""The database tables, as SQLAlchemy declarative classes.

Changing a table means adding an alembic revision under store/migrations/versions.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ID = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite returns naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class HostRow(Base):
    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    url: Mapped[str] = mapped_column(String(2048))
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    tls: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    insecure: Mapped[bool] = mapped_column(default=False)
    ssh: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    reachable: Mapped[bool | None] = mapped_column(nullable=True)
    state_since: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_checked: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    facts: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class HostTombstoneRow(Base):
    """A host name the user removed, which corral must not register again by itself."""

    __tablename__ = "host_tombstones"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    removed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class TokenRow(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(63), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_time", "time"),
        Index("ix_events_kind", "kind"),
        Index("ix_events_resource", "resource"),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class StackRow(Base):
    __tablename__ = "stacks"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    file: Mapped[str] = mapped_column(Text)
    env: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    base_dir: Mapped[str] = mapped_column(String(4096), default="")
    stopped: Mapped[list[str]] = mapped_column(JSON, default=list)
    mode: Mapped[str] = mapped_column(String(16), default="")  # "": the file decides
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class LeftoverRow(Base):
    """A stack `down` removed while a host did not answer: its containers and networks on
    that host are removed when it answers again."""

    __tablename__ = "stack_leftovers"

    stack: Mapped[str] = mapped_column(String(63), primary_key=True)
    host: Mapped[str] = mapped_column(String(63), primary_key=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    since: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class SlotRow(Base):
    """One replica of one service of a stack: where it is placed and what was seen of it."""

    __tablename__ = "stack_slots"
    __table_args__ = (Index("ux_stack_slots", "stack", "service", "replica", unique=True),)

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    stack: Mapped[str] = mapped_column(String(63))
    service: Mapped[str] = mapped_column(String(63))
    replica: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(63), default="")
    container_id: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default="pending")
    health: Mapped[str] = mapped_column(String(16), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class TemplateRow(Base):
    __tablename__ = "templates"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    file: Mapped[str] = mapped_column(Text)
    base_dir: Mapped[str] = mapped_column(String(4096), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class SessionRow(Base):
    """One session: its request, where it runs, its state, and its history after clean-up."""

    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_state", "state"),
        Index("ix_sessions_cleaned", "cleaned_at"),
    )

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    template: Mapped[str] = mapped_column(String(63))
    file: Mapped[str] = mapped_column(Text)  # the template as it was when the session began
    base_dir: Mapped[str] = mapped_column(String(4096), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    host: Mapped[str] = mapped_column(String(63), default="")
    network: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str] = mapped_column(Text, default="")
    cpus: Mapped[float] = mapped_column(default=0.0)
    memory: Mapped[int] = mapped_column(BigInteger, default=0)
    ttl_s: Mapped[float] = mapped_column(default=3600.0)
    endpoints: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    running_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    cleaned_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class SessionContainerRow(Base):
    __tablename__ = "session_containers"
    __table_args__ = (Index("ux_session_containers", "session_id", "service", unique=True),)

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(16))
    service: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(128))
    container_id: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default="pending")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    logs: Mapped[str] = mapped_column(Text, default="")  # the tail kept at clean-up


class TaskRow(Base):
    """One unit of work for a robot or device: queued -> assigned -> running -> done |
    failed | cancelled."""

    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_state", "state", "target"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(63))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    reason: Mapped[str] = mapped_column(Text, default="")
    timeout_s: Mapped[float] = mapped_column(default=600.0)
    source: Mapped[str] = mapped_column(String(200), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    assigned_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class PrinterRow(Base):
    __tablename__ = "printers"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="idle")
    door: Mapped[str] = mapped_column(String(63), default="")
    bed_type: Mapped[str] = mapped_column(String(63))
    bed: Mapped[str | None] = mapped_column(String(63), nullable=True)
    position: Mapped[float] = mapped_column(default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class RackRow(Base):
    __tablename__ = "racks"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    position: Mapped[float] = mapped_column(default=0.0)
    slots: Mapped[int] = mapped_column(Integer, default=10)


class BedRow(Base):
    __tablename__ = "beds"
    __table_args__ = (
        Index("ux_beds_slot", "rack", "slot", unique=True),
        Index("ix_beds_free", "type", "state", "rack", "slot"),  # the nearest free bed
    )

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    type: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16), default="clean")
    printer: Mapped[str | None] = mapped_column(String(63), nullable=True)
    rack: Mapped[str | None] = mapped_column(String(63), nullable=True)
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reserved_for: Mapped[str | None] = mapped_column(String(63), nullable=True)


class PrinterStateRow(Base):
    """Each printer state change, for utilization over any interval."""

    __tablename__ = "printer_states"
    __table_args__ = (Index("ix_printer_states", "printer", "time"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    printer: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))
    time: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class DeviceRow(Base):
    """A Wasm device (a supervisor): how to reach it, what it offers, how it has been."""

    __tablename__ = "devices"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    port: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(255), default="/")
    tls: Mapped[bool] = mapped_column(default=False)
    source: Mapped[str] = mapped_column(String(16))
    description: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    blacklisted: Mapped[bool] = mapped_column(default=False)
    ok_checks: Mapped[int] = mapped_column(Integer, default=0)
    failed_checks: Mapped[int] = mapped_column(Integer, default=0)
    status_log: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    health: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ModuleRow(Base):
    """One version of a Wasm module: the binary, what it exports and imports, its functions."""

    __tablename__ = "modules"
    __table_args__ = (Index("ux_modules_name_sha", "name", "sha256", unique=True),)

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    binary: Mapped[bytes] = mapped_column(LargeBinary)
    exports: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    requirements: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    functions: Mapped[dict[str, dict[str, Any]]] = mapped_column(JSON, default=dict)
    files: Mapped[dict[str, dict[str, Any]]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ModuleFileRow(Base):
    """A data file attached to a module (mounted at deployment)."""

    __tablename__ = "module_files"

    module_id: Mapped[str] = mapped_column(String(24), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(127))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class DeploymentRow(Base):
    """A manifest placed on devices: its steps, each device's part and answers, its state."""

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    sequence: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    parts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    responses: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class RobotRow(Base):
    """A robot: its group, priority, map, credential and last known state."""

    __tablename__ = "robots"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    group: Mapped[str] = mapped_column(String(63), default="")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    map: Mapped[str | None] = mapped_column(String(63), nullable=True)
    marker: Mapped[str | None] = mapped_column(String(63), nullable=True)
    signed: Mapped[bool] = mapped_column(default=False)
    key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    token_id: Mapped[int | None] = mapped_column(ID, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="offline")
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class CommandRow(Base):
    """One command for one robot; delivered at least once, in id order, until acknowledged."""

    __tablename__ = "robot_commands"
    __table_args__ = (Index("ix_robot_commands_open", "robot", "acked_at"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    robot: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    acked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class FleetMapRow(Base):
    """A map (markers and lanes); its traffic table is in `FleetTrafficRow`s."""

    __tablename__ = "fleet_maps"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    doc: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class FleetTrafficRow(Base):
    """One robot in a map's traffic table: the marker it holds, the move it was granted and
    what it waits for; a batch of decisions rewrites the rows it changed, no others."""

    __tablename__ = "fleet_traffic"

    map: Mapped[str] = mapped_column(String(63), primary_key=True)
    robot: Mapped[str] = mapped_column(String(63), primary_key=True)
    at: Mapped[str] = mapped_column(String(63))
    next: Mapped[str | None] = mapped_column(String(63), nullable=True)
    wait_marker: Mapped[str | None] = mapped_column(String(63), nullable=True)
    wait_resource: Mapped[str | None] = mapped_column(String(160), nullable=True)
    wait_holder: Mapped[str | None] = mapped_column(String(63), nullable=True)


class MissionRow(Base):
    """A robot's destination and objective, its route and how far along it is."""

    __tablename__ = "missions"
    __table_args__ = (Index("ix_missions_state", "state", "robot"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    robot: Mapped[str] = mapped_column(String(63))
    map: Mapped[str] = mapped_column(String(63))
    goal: Mapped[str] = mapped_column(String(63))
    objective: Mapped[str] = mapped_column(Text, default="")
    route: Mapped[list[str]] = mapped_column(JSON, default=list)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    task_id: Mapped[int | None] = mapped_column(ID, nullable=True)
    # at the goal: [{id, type, blocking, parameters, status}], status as last reported
    actions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class VdaVehicleRow(Base):
    """A robot that speaks VDA 5050: its manufacturer and serial number (its MQTT topics)."""

    __tablename__ = "vda_vehicles"
    __table_args__ = (Index("ux_vda_vehicles_identity", "manufacturer", "serial", unique=True),)

    robot: Mapped[str] = mapped_column(String(63), primary_key=True)
    manufacturer: Mapped[str] = mapped_column(String(127))
    serial: Mapped[str] = mapped_column(String(127))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ReplicaRow(Base):
    """A running `corral serve` sharing this database: where it answers, when it was seen."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class LeadershipRow(Base):
    """The one row of the current leadership term: its number, who took it and when."""

    __tablename__ = "leadership"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    term: Mapped[int] = mapped_column(ID, default=0)
    holder: Mapped[str] = mapped_column(String(32), default="")
    since: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
