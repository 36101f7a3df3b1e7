"""Settings for every corral process, read in one place.

Sources, strongest first: keyword arguments, environment (`CORRAL_*`), a YAML file
(`CORRAL_CONFIG`, else `./corral.yaml` when present), then the defaults below.
"""

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from corral import DEFAULT_PORT
from corral.model.schedule import parse_schedule
from corral.model.subnets import parse_pool


def _config_file() -> Path | None:
    named = os.environ.get("CORRAL_CONFIG")
    if named:
        return Path(named)
    local = Path("corral.yaml")
    return local if local.exists() else None


class TaskTemplate(BaseModel):
    """The task a `task` trigger creates; the message body is added as params.payload."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=32)
    target: str = Field(min_length=1, max_length=63)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0
    timeout_s: float = Field(default=600.0, gt=0)


class TriggerSpec(BaseModel):
    """A rule: from one source (an AMQP queue, an MQTT topic, a schedule, or REST only) to
    an action."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")
    amqp_queue: str | None = Field(default=None, min_length=1, max_length=255)
    mqtt_topic: str | None = Field(default=None, min_length=1, max_length=255)
    schedule: str | None = Field(default=None, description="cron (`0 21 * * *`) or `every 30s`")
    broker: str | None = Field(default=None, description="Broker name; default: the farm's.")
    action: Literal["farm.ready", "farm.homing", "task"]
    task: TaskTemplate | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "TriggerSpec":
        sources = [s for s in (self.amqp_queue, self.mqtt_topic, self.schedule) if s]
        if len(sources) > 1:
            raise ValueError("a trigger has one source: amqp_queue, mqtt_topic or schedule")
        if self.schedule:
            parse_schedule(self.schedule)
        if (self.action == "task") != (self.task is not None):
            raise ValueError("action task needs `task: {kind, target}` (and only it does)")
        return self


class Settings(BaseSettings):
    """Everything an operator may set; each field is documented in docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="forbid")

    home: Path = Field(default=Path(".corral"), description="State directory (SQLite, logs).")
    database_url: str = Field(default="", description="SQLAlchemy URL; default SQLite in home.")
    bind: str = Field(default="127.0.0.1", description="Address `corral serve` listens on.")
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    local_docker_url: str = Field(
        default="unix:///var/run/docker.sock",
        description="Engine registered as host `local` at start when it answers; empty: never.",
    )
    hosts_file: Path | None = Field(default=None, description="YAML hosts file applied at start.")
    host_refresh_seconds: float = Field(default=2.0, gt=0, le=3600)
    host_timeout_seconds: float = Field(default=2.0, gt=0, le=120)
    stack_resync_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="Period of the full stack resync."
    )
    go1_file: Path | None = Field(
        default=None, description="Compose file of the Go1 API's predefined containers."
    )
    go1_stack: str = Field(default="go1", description="Stack name the Go1 API manages.")
    go1_port: int | None = Field(
        default=None, ge=1, le=65535, description="Also serve the API on this port (9999)."
    )
    go1_anonymous: bool = Field(
        default=False, description="Let the Go1 routes work without a token (seed clients)."
    )
    templates_dir: Path | None = Field(
        default=None, description="Folder whose *.yml session templates are added at start."
    )
    session_grace_seconds: float = Field(
        default=30.0, ge=0, le=86400, description="How long a finished session's containers stay."
    )
    session_check_seconds: float = Field(
        default=0.5, gt=0, le=60, description="Period of the session monitor and reaper."
    )
    sessions_per_host: int = Field(
        default=50, ge=1, le=10000, description="Most active sessions one host may hold."
    )
    session_subnets: str = Field(
        default="10.213.0.0/16",
        description="Private IPv4 pool each session network's subnet is cut from (per host).",
    )
    session_subnet_prefix: int = Field(
        default=27, ge=8, le=29, description="Size of each session's block (/27: 29 containers)."
    )
    edgeecho_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve the edgeECHO API on this port (5000)."
    )
    edgeecho_template: str = Field(
        default="edgeecho", description="Template that edgeECHO's POST /post/ instantiates."
    )
    edgeecho_anonymous: bool = Field(
        default=False, description="Let the edgeECHO routes work without a token (seed clients)."
    )
    public_url: str = Field(
        default="",
        description="Base URL devices use to reach corral (module downloads, register); "
        "default http://<bind>:<port>.",
    )
    mdns_enabled: bool = Field(
        default=True, description="Browse mDNS for Wasm-IoT supervisors (_webthing._tcp)."
    )
    mdns_interface: str = Field(
        default="127.0.0.1", description="IPv4 address of the interface mDNS browses on."
    )
    mdns_accept: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Name patterns (fnmatch) of mDNS devices to take; others are ignored.",
    )
    device_health_seconds: float = Field(
        default=15.0, gt=0, le=3600, description="Period of device health checks."
    )
    device_failures_inactive: int = Field(
        default=5, ge=1, le=1000, description="Failed health checks in a row before inactive."
    )
    device_timeout_seconds: float = Field(
        default=5.0, gt=0, le=300, description="Timeout of one request to a device."
    )
    execute_timeout_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="Longest wait for a chain's result."
    )
    replica_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description=(
            "With PostgreSQL: the election's period P. The leader confirms its lock every "
            "P/4 and acts at most 2P after the last confirmation; a replica that wins the "
            "lock from a leader that did not hand its term back waits up to 2.5P."
        ),
    )
    robot_heartbeat_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="A robot silent this long is offline."
    )
    vda5050_broker: str | None = Field(
        default=None,
        description="Name of the mqtt:// broker in `brokers` VDA 5050 vehicles use; None: off.",
    )
    vda5050_admit_map: str | None = Field(
        default=None,
        description="Admit unknown VDA 5050 vehicles on their first ONLINE as robots "
        "MANUFACTURER-SERIAL on this map; None: only registered vehicles.",
    )
    vda5050_broker_log: Path | None = Field(
        default=None,
        description="Mosquitto's log file (log_type all or debug): the leader follows it and "
        "makes each publish the broker's ACLs refused on a VDA 5050 topic an event.",
    )
    vda5050_visualization: bool = Field(
        default=True,
        description="Take in the vehicles' visualization messages (positions at their rate, "
        "often 10 Hz); off: positions from their states only.",
    )
    vda5050_share_group: str = Field(
        default="corral",
        pattern=r"^[A-Za-z0-9_.-]{1,63}$",
        description="With replicas on PostgreSQL: the MQTT shared-subscription group "
        "($share/GROUP/...) through which each replica takes a share of the vehicles' "
        "visualization messages. Two corral installations on one broker need two groups.",
    )
    vda5050_interface: str = Field(
        default="uagv", pattern=r"^[A-Za-z0-9_.-]{1,63}$", description="VDA 5050 interfaceName."
    )
    vda5050_major: str = Field(
        default="v2", pattern=r"^v[0-9]{1,3}$", description="VDA 5050 majorVersion topic level."
    )
    wasmiot_port: int | None = Field(
        default=None, ge=1, le=65535, description="Also serve the Wasm-IoT API on this port (3000)."
    )
    wasmiot_anonymous: bool = Field(
        default=False,
        description="Let requests on wasmiot_port work without a token (seed clients).",
    )
    init_dir: Path | None = Field(
        default=None,
        description="Wasm-IoT init/ folder imported at start "
        "(device/, module/, deployment/, files/).",
    )
    brokers: dict[str, str] = Field(
        default_factory=dict,
        description="Broker connections by name: amqp://user:pass@host:5672/ or mqtt://host:1883.",
    )
    triggers: list[TriggerSpec] = Field(default_factory=list, description="Trigger rules.")
    farm_enabled: bool = Field(default=False, description="Run the print farm (arm, triggers).")
    farm_amqp: str = Field(default="amqp", description="Broker the farm's queues are on.")
    farm_mqtt: str = Field(default="mqtt", description="Broker the arm listens on.")
    farm_arm: str = Field(default="robot_arm", description="Task target name of the arm.")
    farm_ready_queue: str = Field(default="ready")
    farm_homing_queue: str = Field(default="homing")
    farm_homing_schedule: str = Field(default="0 21 * * *", description="'' for none.")
    farm_job_topic: str = Field(default="robot_arm/job")
    farm_status_topic: str = Field(default="robot_arm/status")
    farm_job_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        description="A job fails when the arm says nothing this long.",
    )
    farm_file: Path | None = Field(
        default=None, description="YAML farm file (racks, beds, printers) applied at start."
    )
    farm_accept_unknown: bool = Field(
        default=False,
        description="A ready message for an unknown printer id adds that printer "
        "(door printer<id>, farm_default_bed_type) instead of being refused.",
    )
    farm_default_bed_type: str = Field(
        default="standard", min_length=1, max_length=63, description="Bed type of such printers."
    )
    engine_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Allow-list of CIDRs and host names that engine URLs may point at; empty: any.",
    )
    device_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Allow-list of CIDRs and host names device addresses may be; empty: any.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    bootstrap_token: str | None = Field(
        default=None, description="Admin token to install on first start instead of a random one."
    )
    metrics_public: bool = Field(default=False, description="Serve /metrics without a token.")
    event_retention_days: int = Field(default=30, ge=1)
    log_level: str = Field(default="info")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="`corral serve`'s event loop: uvloop (libuv; less CPU per robot message) "
        "or the standard library's; asyncio where uvloop is not installed.",
    )
    access_log: bool = Field(
        default=False, description="One log line per request (secrets in it redacted)."
    )

    @field_validator("triggers")
    @classmethod
    def _unique_triggers(cls, value: list[TriggerSpec]) -> list[TriggerSpec]:
        names = [t.name for t in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"trigger names must be unique: {', '.join(twice)}")
        return value

    @field_validator("brokers")
    @classmethod
    def _broker_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not url.startswith(("amqp://", "amqps://", "mqtt://")):
                raise ValueError(f"broker {name}: URL must start with amqp://, amqps:// or mqtt://")
        return value

    @field_validator("farm_homing_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        if value:
            parse_schedule(value)
        return value

    @model_validator(mode="after")
    def _session_pool(self) -> "Settings":
        try:
            parse_pool(self.session_subnets, self.session_subnet_prefix)
        except ValueError as exc:
            raise ValueError(f"session_subnets: {exc}") from None
        return self

    @field_validator("engine_networks", "device_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @property
    def base_url(self) -> str:
        """Where others (devices, other replicas) reach this corral: `public_url`, else
        http://<bind>:<port> (loopback when bound to every address)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "::") else self.bind
        return f"http://{host}:{self.port}"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.home / 'corral.db').resolve()}"
