"""Settings for every corral process, read in one place.

Sources, strongest first: keyword arguments, environment (`CORRAL_*`), a YAML file
(`CORRAL_CONFIG`, else `./corral.yaml` when present), then the defaults below.
"""

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_PORT = 8750


def _config_file() -> Path | None:
    named = os.environ.get("CORRAL_CONFIG")
    if named:
        return Path(named)
    local = Path("corral.yaml")
    return local if local.exists() else None


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
    edgeecho_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve the edgeECHO API on this port (5000)."
    )
    edgeecho_template: str = Field(
        default="edgeecho", description="Template that edgeECHO's POST /post/ instantiates."
    )
    edgeecho_anonymous: bool = Field(
        default=False, description="Let the edgeECHO routes work without a token (seed clients)."
    )
    engine_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Allow-list of CIDRs and host names that engine URLs may point at; empty: any.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    bootstrap_token: str | None = Field(
        default=None, description="Admin token to install on first start instead of a random one."
    )
    metrics_public: bool = Field(default=False, description="Serve /metrics without a token.")
    event_retention_days: int = Field(default=30, ge=1)
    log_level: str = Field(default="info")

    @field_validator("engine_networks", mode="before")
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
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.home / 'corral.db').resolve()}"
