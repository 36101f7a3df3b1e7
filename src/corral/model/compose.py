"""Docker Compose stack files: interpolate, parse and validate them into a StackSpec.

Called by the stack store, the API and the CLI to check a file, and by the reconciler to plan it.
"""

import ipaddress
import math
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from corral.model.compose_env import interpolate, parse_env_text
from corral.model.names import check_name
from corral.model.stack_spec import (
    CONSTRAINT_FIELDS,
    ROLLBACK_DEFAULTS,
    BuildSpec,
    Condition,
    Constraint,
    Dependency,
    FailureAction,
    Healthcheck,
    NetworkSpec,
    PortMapping,
    RestartPolicy,
    ServiceSpec,
    StackMode,
    StackSpec,
    UpdateOrder,
    UpdatePolicy,
    VolumeMount,
    VolumeSpec,
)
from corral.model.yamlfile import FileInvalid, Located, Problem, dotted, load_located

Key = tuple[str | int, ...]
T = TypeVar("T")
P = ParamSpec("P")


# ---------------------------------------------------------------- public helpers

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|h|m|s)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_BYTES = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(text: str | int | float) -> float:
    """Seconds in a Compose duration: a number of seconds, or units like "1m30s", "500ms"."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as 10s, not a boolean")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"bad duration {text!r}: must be zero or more seconds")
        return float(text)
    value = text.strip()
    if _NUMBER.fullmatch(value):
        return float(value)
    total = 0.0
    position = 0
    while value and position < len(value):
        match = _DURATION_PART.match(value, position)
        if not match:
            break
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        position = match.end()
    if not value or position < len(value):
        raise ValueError(f"bad duration {text!r}: use seconds or units like 1m30s, 500ms, 10s, 2h")
    return total


def parse_bytes(text: str | int) -> int:
    """Bytes in a Compose size: an int, or "1024b", "512k", "64m", "1g" (powers of 1024)."""
    if isinstance(text, bool):
        raise ValueError("expected a size such as 64m, not a boolean")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"bad size {text!r}: must be zero or more bytes")
        return text
    match = _BYTES.fullmatch(text.strip())
    if not match:
        raise ValueError(f"bad size {text!r}: use bytes or units like 1024b, 512k, 64m, 1g")
    unit = (match[2] or "").lower()
    return int(Decimal(match[1]) * _BYTE_UNITS[unit])


# ---------------------------------------------------------------- scalar checks


class _Bad(Exception):
    """One problem found while parsing a value, at `path`."""

    def __init__(self, path: Key, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def _text(value: Any, path: Key, what: str = "a string") -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _Bad(path, f"expected {what}")


def _word(value: Any, path: Key, what: str = "a non-empty string") -> str:
    text = _text(value, path, what).strip()
    if not text:
        raise _Bad(path, f"expected {what}")
    return text


def _arg(value: Any, path: Key) -> str:
    """One word of a command: text, with booleans written as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _text(value, path)


def _scalar(value: Any, path: Key) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return _text(value, path, "a string, number or boolean")


def _bool(value: Any, path: Key) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLS:
        return _BOOLS[value.strip().lower()]
    raise _Bad(path, "expected true or false")


def _int(value: Any, path: Key, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        number = int(value)
    else:
        raise _Bad(path, "expected a whole number")
    if number < low or (high is not None and number > high):
        limit = f"between {low} and {high}" if high is not None else f"{low} or more"
        raise _Bad(path, f"must be {limit}, not {number}")
    return number


def _cpus(value: Any, path: Key) -> float:
    try:
        number = float(_text(value, path, "a number of CPUs"))
    except ValueError:
        raise _Bad(path, f"expected a number of CPUs such as 0.5, not {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise _Bad(path, "the number of CPUs must be more than 0")
    return number


def _duration(value: Any, path: Key) -> float:
    if not isinstance(value, str | int | float):
        raise _Bad(path, "expected a duration such as 10s or 1m30s")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _Bad(path, str(exc)) from None


def _bytes(value: Any, path: Key) -> int:
    if not isinstance(value, str | int):
        raise _Bad(path, "expected a size such as 64m or 1g")
    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise _Bad(path, str(exc)) from None


def _positive_bytes(value: Any, path: Key) -> int:
    size = _bytes(value, path)
    if size <= 0:
        raise _Bad(path, "must be more than 0 bytes")
    return size


def _mapping(value: Any, path: Key) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise _Bad(path, "expected a mapping")


def _sequence(value: Any, path: Key) -> list[Any]:
    if isinstance(value, list):
        return value
    raise _Bad(path, "expected a list")


def _argv(value: Any, path: Key) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise _Bad(path, f"cannot split into words: {exc}") from None
    items = _sequence(value, path)
    return tuple(_arg(item, (*path, i)) for i, item in enumerate(items))


def _absolute(value: Any, path: Key, what: str = "path") -> str:
    text = _word(value, path, f"an absolute {what}")
    if not text.startswith("/"):
        raise _Bad(path, f"{what} {text!r} must be absolute (start with '/')")
    return text


# ---------------------------------------------------------------- stack file rules

_TOP_KEYS = {"version", "name", "services", "networks", "volumes"}
_SERVICE_KEYS = {
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "networks",
    "network_mode",
    "depends_on",
    "restart",
    "healthcheck",
    "labels",
    "hostname",
    "privileged",
    "devices",
    "cap_add",
    "group_add",
    "shm_size",
    "runtime",
    "deploy",
    "stop_grace_period",
    "working_dir",
    "user",
    "init",
    "tty",
    "stdin_open",
    "extra_hosts",
}
_KEY_HINTS = {"container_name": "corral names containers itself; remove container_name"}
_RESTART: dict[str, RestartPolicy] = {
    "no": "no",
    "always": "always",
    "on-failure": "on-failure",
    "unless-stopped": "unless-stopped",
}
_SWARM_RESTART: dict[str, RestartPolicy] = {
    "none": "no",
    "on-failure": "on-failure",
    "any": "always",
}
_CONDITIONS: dict[str, Condition] = {
    "service_started": "service_started",
    "service_healthy": "service_healthy",
    "service_completed_successfully": "service_completed_successfully",
}
_NETWORK_MODES = ("host", "none", "bridge")
_RESERVED_LABEL = "corral."
_CONSTRAINT = re.compile(r"\s*([^\s=!]+)\s*(==|!=)\s*(\S(?:.*\S)?)\s*", re.DOTALL)
_VOLUME_OPTIONS = {"ro", "rw", "cached", "delegated", "consistent"}


@dataclass
class _Deploy:
    replicas: int = 1
    cpu_limit: float | None = None
    memory_limit: int | None = None
    cpu_reservation: float | None = None
    memory_reservation: int | None = None
    constraints: tuple[Constraint, ...] = ()
    update_order: str = "stop-first"
    restart: tuple[RestartPolicy, int] | None = None
    update_config: UpdatePolicy = field(default_factory=UpdatePolicy)
    rollback_config: UpdatePolicy = ROLLBACK_DEFAULTS
    max_replicas_per_node: int = 0
    restart_delay_s: float | None = None
    restart_window_s: float | None = None
    global_mode: bool = False


_UPDATE_KEYS = {"parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order"}
_CORRAL_KEYS = {"mode"}
# What a swarm service cannot express, so swarm mode refuses it (the key, and why).
_NOT_IN_SWARM = {
    "privileged": "swarm services cannot run privileged containers",
    "devices": "swarm services cannot map devices",
    "runtime": "swarm services cannot choose a container runtime",
    "shm_size": "swarm services cannot set the size of /dev/shm",
    "network_mode": "swarm services attach to overlay networks; use networks:",
}


Read = Callable[[Path], str]
"""How the caller reads a file the stack names (its folder's `.env`, an `env_file`): the
text, or the errors `Path.read_text` raises (FileNotFoundError, OSError, UnicodeDecodeError).
The model reads nothing itself."""


def no_files(path: Path) -> str:
    """A `Read` for a file checked with no folder to read from: every file is missing."""
    raise FileNotFoundError(path)


class _Parser:
    """Walks one interpolated document, collecting every problem instead of stopping."""

    def __init__(
        self,
        doc: Located,
        variables: Mapping[str, str],
        base_dir: Path | None,
        stack: str,
        read: Read = no_files,
    ) -> None:
        self.doc = doc
        self.variables = variables
        self.base_dir = base_dir
        self.read = read
        self.stack = stack
        self.mode: StackMode = "containers"
        self.forced_mode: StackMode | None = None
        self.problems: list[Problem] = []
        self.declared_networks: set[str] = set()
        self.networks: dict[str, NetworkSpec] = {}
        self.declared_volumes: set[str] = set()
        self.dependency_paths: dict[tuple[str, str], Key] = {}
        self.uninterpolated: set[Key] = set()

    # -- plumbing

    def add(self, path: Key, message: str) -> None:
        # A value whose interpolation failed was already reported; say nothing more about it.
        if any(path[: len(bad)] == bad for bad in self.uninterpolated):
            return
        self.problems.append(Problem(dotted(path), self.doc.line_of(path), message))

    def attempt(self, default: T, parse: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """parse(*args); on a problem, record it and return `default`."""
        try:
            return parse(*args, **kwargs)
        except _Bad as bad:
            self.add(bad.path, bad.message)
            return default

    def opt(
        self,
        body: Mapping[str, Any],
        key: str,
        path: Key,
        parse: Callable[[Any, Key], T],
        default: T,
    ) -> T:
        """Parse body[key] if present and not null; on a problem record it, return default."""
        value = body.get(key)
        if value is None:
            return default
        return self.attempt(default, parse, value, (*path, key))

    def section(
        self, body: Mapping[str, Any], key: str, path: Key, allowed: set[str]
    ) -> dict[str, Any]:
        """A nested mapping (empty if absent), with its keys checked against `allowed`."""
        inner: dict[str, Any] = self.opt(body, key, path, _mapping, {})
        self.check_keys(inner, (*path, key), allowed)
        return inner

    def check_keys(self, body: Mapping[str, Any], path: Key, allowed: set[str]) -> None:
        for key in body:
            if key not in allowed and not key.startswith("x-"):
                self.add((*path, key), _KEY_HINTS.get(key, "unknown or unsupported key"))

    def interpolate(self, value: Any, path: Key) -> Any:
        if isinstance(value, dict):
            return {
                key: item if key.startswith("x-") else self.interpolate(item, (*path, key))
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self.interpolate(item, (*path, i)) for i, item in enumerate(value)]
        if isinstance(value, str):
            try:
                return interpolate(value, self.variables)
            except ValueError as exc:
                self.add(path, str(exc))
                self.uninterpolated.add(path)
        return value

    def resolve(self, value: str, path: Key, what: str) -> str:
        """An absolute, normalised path; relative ones are taken from the stack's directory."""
        if value.startswith("~"):
            raise _Bad(path, f"{what} {value!r}: '~' is not expanded; use an absolute or ./ path")
        if value.startswith("/"):
            return os.path.normpath(value)
        if self.base_dir is None:
            raise _Bad(
                path, f"relative {what} {value!r} needs the stack's directory; none was given"
            )
        return os.path.normpath(os.path.join(os.path.abspath(self.base_dir), value))

    # -- top level

    def stack_spec(self, data: Any) -> StackSpec:
        if not isinstance(data, dict):
            self.add((), "expected a mapping with a 'services' key")
            return StackSpec({}, {}, {})
        self.check_keys(data, (), _TOP_KEYS)
        self.corral_options(data)
        networks = self.named_sections(data, "networks", self.network)
        self.networks = networks
        volumes = self.named_sections(data, "volumes", self.volume)
        raw = data.get("services")
        if not isinstance(raw, dict) or not raw:
            self.add(("services",), "a stack needs a non-empty 'services' mapping")
            return StackSpec({}, networks, volumes, self.mode)
        services: dict[str, ServiceSpec] = {}
        for name, body in raw.items():
            spec = self.service(name, body, set(raw))
            if spec is not None:
                services[name] = spec
        self.check_dependencies(services)
        if "default" not in networks and any("default" in s.networks for s in services.values()):
            networks["default"] = NetworkSpec("default")
        return StackSpec(services, networks, volumes, self.mode)

    def named_sections(
        self, data: Mapping[str, Any], key: str, parse: Callable[[str, Any, Key], T]
    ) -> dict[str, T]:
        body: dict[str, Any] = self.opt(data, key, (), _mapping, {})
        declared = self.declared_networks if key == "networks" else self.declared_volumes
        declared.update(body)
        out: dict[str, T] = {}
        for name, value in body.items():
            path: Key = (key, name)
            if name.startswith("x-"):
                continue
            try:
                check_name(name, f"{key[:-1]} name")
            except ValueError as exc:
                self.add(path, str(exc))
                continue
            try:
                out[name] = parse(name, value, path)
            except _Bad as bad:
                self.add(bad.path, bad.message)
        return out

    def external(self, body: Mapping[str, Any], path: Key, what: str) -> tuple[bool, str | None]:
        """The `external` and `name` keys, shared by networks and volumes."""
        external_name = self.opt(body, "name", path, _word, None)
        raw = body.get("external")
        external = False
        if isinstance(raw, dict):  # legacy `external: {name: x}`
            external = True
            self.check_keys(raw, (*path, "external"), {"name"})
            external_name = self.opt(raw, "name", (*path, "external"), _word, external_name)
        elif raw is not None:
            external = self.attempt(False, _bool, raw, (*path, "external"))
        if external:
            for key in body:
                if key not in ("external", "name") and not key.startswith("x-"):
                    self.add((*path, key), f"an external {what} takes only 'name'")
        elif "name" in body:
            self.add(
                (*path, "name"),
                f"only an external {what} may set name; corral names the {what}s it creates",
            )
            external_name = None
        return external, external_name

    def network(self, name: str, value: Any, path: Key) -> NetworkSpec:
        if value is None:
            return NetworkSpec(name)
        body = _mapping(value, path)
        self.check_keys(body, path, {"driver", "external", "attachable", "ipam", "labels", "name"})
        external, external_name = self.external(body, path, "network")
        ipam = self.section(body, "ipam", path, {"driver", "config"})
        ipam_path = (*path, "ipam")
        driver = self.opt(ipam, "driver", ipam_path, _word, "default")
        if driver != "default":
            self.add((*ipam_path, "driver"), "only the default IPAM driver is supported")
        subnet: str | None = None
        configs: list[Any] = self.opt(ipam, "config", ipam_path, _sequence, [])
        if len(configs) > 1:
            self.add((*ipam_path, "config"), "only one IPAM config (one subnet) is supported")
        elif configs:
            config_path = (*ipam_path, "config", 0)
            config = self.attempt({}, _mapping, configs[0], config_path)
            self.check_keys(config, config_path, {"subnet"})
            subnet = self.opt(config, "subnet", config_path, _subnet, None)
        return NetworkSpec(
            name=name,
            driver=self.opt(body, "driver", path, _word, None),
            external=external,
            attachable=self.opt(body, "attachable", path, _bool, False),
            subnet=subnet,
            labels=self.opt(body, "labels", path, self.labels, {}),
            external_name=external_name,
        )

    def volume(self, name: str, value: Any, path: Key) -> VolumeSpec:
        if value is None:
            return VolumeSpec(name)
        body = _mapping(value, path)
        self.check_keys(body, path, {"driver", "external", "name"})
        external, external_name = self.external(body, path, "volume")
        driver = self.opt(body, "driver", path, _word, None)
        return VolumeSpec(name, driver, external, external_name)

    # -- services

    def service(self, name: str, body: Any, all_names: set[str]) -> ServiceSpec | None:
        path: Key = ("services", name)
        try:
            check_name(name, "service name")
        except ValueError as exc:
            self.add(path, str(exc))
        if not isinstance(body, dict):
            self.add(path, "expected a mapping with image or build")
            return None
        self.check_keys(body, path, _SERVICE_KEYS)
        before = len(self.problems)

        build = self.opt(body, "build", path, self.build, None)
        image = self.opt(body, "image", path, _image, None)
        if body.get("image") is None and body.get("build") is None:
            self.add(path, "a service needs image or build")
        environment: dict[str, str] = self.opt(body, "env_file", path, self.env_files, {})
        environment.update(self.opt(body, "environment", path, self.key_values, dict[str, str]()))
        network_mode = self.opt(body, "network_mode", path, _network_mode, None)
        networks: dict[str, tuple[str, ...]] = self.opt(
            body, "networks", path, self.service_networks, {}
        )
        if body.get("networks") is not None and body.get("network_mode") is not None:
            self.add((*path, "networks"), "networks cannot be combined with network_mode")
        elif body.get("networks") is None and body.get("network_mode") is None:
            networks = {"default": ()}
        deploy = self.opt(body, "deploy", path, self.deploy, _Deploy())
        restart = self.opt(body, "restart", path, _restart, None) or deploy.restart or ("no", 0)
        depends_on: tuple[Dependency, ...] = self.opt(body, "depends_on", path, self.depends_on, ())
        for dependency in depends_on:
            if dependency.service not in all_names:
                where = self.dependency_paths[(name, dependency.service)]
                self.add(where, f"depends on unknown service {dependency.service!r}")
        spec = ServiceSpec(
            name=name,
            image=image or f"{self.stack}-{name}:latest",
            line=self.doc.line_of(path),
            build=build,
            command=self.opt(body, "command", path, _argv, None),
            entrypoint=self.opt(body, "entrypoint", path, _argv, None),
            environment=environment,
            ports=self.opt(body, "ports", path, self.ports, ()),
            expose=self.opt(body, "expose", path, self.expose, ()),
            volumes=self.opt(body, "volumes", path, self.mounts, ()),
            networks=networks,
            network_mode=network_mode,
            depends_on=depends_on,
            restart=restart[0],
            restart_max=restart[1],
            healthcheck=self.opt(body, "healthcheck", path, self.healthcheck, None),
            labels=self.opt(body, "labels", path, self.labels, {}),
            hostname=self.opt(body, "hostname", path, _word, None),
            privileged=self.opt(body, "privileged", path, _bool, False),
            devices=self.opt(body, "devices", path, self.each(_device), ()),
            cap_add=self.opt(body, "cap_add", path, self.each(_word), ()),
            group_add=self.opt(body, "group_add", path, self.each(_word), ()),
            shm_size=self.opt(body, "shm_size", path, _bytes, None),
            runtime=self.opt(body, "runtime", path, _word, None),
            replicas=deploy.replicas,
            cpu_limit=deploy.cpu_limit,
            memory_limit=deploy.memory_limit,
            cpu_reservation=deploy.cpu_reservation,
            memory_reservation=deploy.memory_reservation,
            constraints=deploy.constraints,
            update_order=deploy.update_order,
            update_config=deploy.update_config,
            rollback_config=deploy.rollback_config,
            max_replicas_per_node=deploy.max_replicas_per_node,
            global_mode=deploy.global_mode,
            restart_delay_s=deploy.restart_delay_s,
            restart_window_s=deploy.restart_window_s,
            stop_grace_s=self.opt(body, "stop_grace_period", path, _duration, 10.0),
            working_dir=self.opt(body, "working_dir", path, _absolute, None),
            user=self.opt(body, "user", path, _word, None),
            init=self.opt(body, "init", path, _bool, False),
            tty=self.opt(body, "tty", path, _bool, False),
            stdin_open=self.opt(body, "stdin_open", path, _bool, False),
            extra_hosts=self.opt(body, "extra_hosts", path, self.extra_hosts, ()),
        )
        if self.mode == "swarm" and len(self.problems) == before:
            self.swarm_checks(spec, body, path)
        # A service with problems is left out, so later checks do not pile on more.
        return spec if len(self.problems) == before else None

    def each(self, parse: Callable[[Any, Key], str]) -> Callable[[Any, Key], tuple[str, ...]]:
        """A parser for a list whose items `parse` checks one by one (all problems kept)."""

        def parse_all(value: Any, path: Key) -> tuple[str, ...]:
            items = _sequence(value, path)
            out: list[str | None] = [
                self.attempt(None, parse, item, (*path, i)) for i, item in enumerate(items)
            ]
            return tuple(item for item in out if item is not None)

        return parse_all

    def build(self, value: Any, path: Key) -> BuildSpec:
        if isinstance(value, str):
            return BuildSpec(self.context(value, path))
        body = _mapping(value, path)
        self.check_keys(body, path, {"context", "dockerfile", "args"})
        context = self.opt(body, "context", path, self.context, None)
        if context is None and body.get("context") is None:
            context = self.attempt(None, self.context, ".", (*path, "context"))
        return BuildSpec(
            context=context or "",
            dockerfile=self.opt(body, "dockerfile", path, _word, "Dockerfile"),
            args=self.opt(body, "args", path, self.key_values, {}),
        )

    def context(self, value: Any, path: Key) -> str:
        text = _word(value, path, "a build context directory")
        if "://" in text or text.startswith("git@"):
            raise _Bad(path, f"build context {text!r}: only local directories are supported")
        return self.resolve(text, path, "build context")

    def key_values(self, value: Any, path: Key) -> dict[str, str]:
        """`environment` or `args`: KEY=VALUE / KEY list, or a mapping; bare keys pass through."""
        out: dict[str, str] = {}
        if isinstance(value, list):
            for i, item in enumerate(value):
                text = self.attempt(None, _text, item, (*path, i), "KEY=VALUE")
                if text is None:
                    continue
                key, sep, rest = text.partition("=")
                if not key.strip():
                    self.add((*path, i), f"expected KEY=VALUE, got {text!r}")
                elif sep:
                    out[key.strip()] = rest
                elif key.strip() in self.variables:
                    out[key.strip()] = self.variables[key.strip()]
            return out
        for key, item in _mapping(value, path).items():
            if item is None:
                if key in self.variables:
                    out[key] = self.variables[key]
                continue
            text = self.attempt(None, _scalar, item, (*path, key))
            if text is not None:
                out[key] = text
        return out

    def env_files(self, value: Any, path: Key) -> dict[str, str]:
        entries = [(value, path)] if isinstance(value, str | dict) else None
        if entries is None:
            entries = [(item, (*path, i)) for i, item in enumerate(_sequence(value, path))]
        out: dict[str, str] = {}
        for entry, where in entries:
            out.update(self.attempt({}, self.env_file, entry, where))
        return out

    def env_file(self, entry: Any, path: Key) -> dict[str, str]:
        required = True
        if isinstance(entry, dict):
            self.check_keys(entry, path, {"path", "required"})
            required = self.opt(entry, "required", path, _bool, True)
            if entry.get("path") is None:
                raise _Bad(path, "an env_file entry needs a path")
            path = (*path, "path")
            entry = entry["path"]
        file = Path(self.resolve(_word(entry, path, "a file path"), path, "env_file"))
        try:
            text = self.read(file)
        except FileNotFoundError:
            if required:
                raise _Bad(path, f"env_file {str(file)!r} does not exist") from None
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise _Bad(path, f"cannot read env_file {str(file)!r}: {exc}") from None
        values, bare, errors = parse_env_text(text)
        for number, message in errors:
            self.add(path, f"env_file {str(file)!r} line {number}: {message}")
        for key in bare:
            if key in self.variables:
                values[key] = self.variables[key]
        return values

    def labels(self, value: Any, path: Key) -> dict[str, str]:
        out: dict[str, str] = {}
        pairs: list[tuple[str, str, Key]] = []
        if isinstance(value, list):
            for i, item in enumerate(value):
                text = self.attempt(None, _text, item, (*path, i), "key=value")
                if text is not None:
                    key, _, rest = text.partition("=")
                    pairs.append((key.strip(), rest, (*path, i)))
        else:
            for key, item in _mapping(value, path).items():
                text = self.attempt(None, _scalar, item, (*path, key))
                if text is not None:
                    pairs.append((key, text, (*path, key)))
        for key, text, where in pairs:
            if not key:
                self.add(where, "a label needs a key")
            elif key.startswith(_RESERVED_LABEL):
                self.add(where, f"label {key!r}: keys starting with 'corral.' are reserved")
            else:
                out[key] = text
        return out

    def ports(self, value: Any, path: Key) -> tuple[PortMapping, ...]:
        items = _sequence(value, path)
        found = [self.attempt(None, _port, item, (*path, i)) for i, item in enumerate(items)]
        return tuple(port for port in found if port is not None)

    def expose(self, value: Any, path: Key) -> tuple[int, ...]:
        items = _sequence(value, path)
        found = [self.attempt(None, _exposed, item, (*path, i)) for i, item in enumerate(items)]
        return tuple(port for port in found if port is not None)

    def mounts(self, value: Any, path: Key) -> tuple[VolumeMount, ...]:
        items = _sequence(value, path)
        found = [self.attempt(None, self.mount, item, (*path, i)) for i, item in enumerate(items)]
        return tuple(mount for mount in found if mount is not None)

    def mount(self, value: Any, path: Key) -> VolumeMount:
        if isinstance(value, dict):
            return self.long_mount(value, path)
        text = _word(value, path, "source:target[:ro] or a mapping")
        parts = text.split(":")
        if len(parts) == 1:
            return VolumeMount("volume", _absolute(parts[0], path, "target"))
        if len(parts) > 3:
            raise _Bad(path, f"volume {text!r} must look like source:target[:ro]")
        source, target = parts[0], _absolute(parts[1], path, "target")
        read_only = False
        for option in parts[2].split(",") if len(parts) == 3 else []:
            if option not in _VOLUME_OPTIONS:
                raise _Bad(path, f"volume option {option!r} is not supported (ro or rw)")
            read_only = read_only or option == "ro"
        if not source:
            raise _Bad(path, f"volume {text!r} has an empty source")
        if source.startswith(("/", ".", "~")):
            return VolumeMount("bind", target, self.resolve(source, path, "bind source"), read_only)
        return VolumeMount("volume", target, self.named_volume(source, path), read_only)

    def named_volume(self, source: str, path: Key) -> str:
        if source not in self.declared_volumes:
            raise _Bad(path, f"volume {source!r} is not declared under top-level volumes")
        return source

    def long_mount(self, body: dict[str, Any], path: Key) -> VolumeMount:
        self.check_keys(
            body, path, {"type", "source", "target", "read_only", "consistency", "bind"}
        )
        bind = self.section(body, "bind", path, {"create_host_path"})
        self.opt(bind, "create_host_path", (*path, "bind"), _bool, True)
        kind = _word(body.get("type"), (*path, "type"), "type: volume, bind or tmpfs")
        target = _absolute(body.get("target"), (*path, "target"), "target")
        read_only = self.opt(body, "read_only", path, _bool, False)
        source = body.get("source")
        source_path = (*path, "source")
        if kind == "bind":
            text = _word(source, source_path, "a bind source path")
            return VolumeMount(
                "bind", target, self.resolve(text, source_path, "bind source"), read_only
            )
        if kind == "volume":
            if source is None or source == "":
                return VolumeMount("volume", target, "", read_only)
            name = self.named_volume(_word(source, source_path), source_path)
            return VolumeMount("volume", target, name, read_only)
        if kind == "tmpfs":
            if source not in (None, ""):
                raise _Bad(source_path, "a tmpfs mount has no source")
            return VolumeMount("tmpfs", target, "", read_only)
        raise _Bad((*path, "type"), f"mount type {kind!r} is not supported (volume, bind or tmpfs)")

    def service_networks(self, value: Any, path: Key) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        entries: list[tuple[str | None, Any, Key]]
        if isinstance(value, list):
            entries = [
                (self.attempt(None, _word, item, (*path, i)), None, (*path, i))
                for i, item in enumerate(value)
            ]
        else:
            entries = [(name, body, (*path, name)) for name, body in _mapping(value, path).items()]
        for name, body, where in entries:
            if name is None:
                continue
            if name != "default" and name not in self.declared_networks:
                self.add(where, f"network {name!r} is not declared under top-level networks")
                continue
            aliases: tuple[str, ...] = ()
            if body is not None:
                settings = self.attempt({}, _mapping, body, where)
                self.check_keys(settings, where, {"aliases"})
                aliases = self.opt(settings, "aliases", where, self.each(_word), ())
            out[name] = aliases
        return out

    def depends_on(self, value: Any, path: Key) -> tuple[Dependency, ...]:
        owner = str(path[1])
        out: list[Dependency] = []
        if isinstance(value, list):
            for i, item in enumerate(value):
                name = self.attempt(None, _word, item, (*path, i), "a service name")
                if name is not None:
                    self.dependency_paths[(owner, name)] = (*path, i)
                    out.append(Dependency(name))
            return tuple(out)
        for name, body in _mapping(value, path).items():
            where: Key = (*path, name)
            self.dependency_paths[(owner, name)] = where
            condition: Condition = "service_started"
            if body is not None:
                settings = self.attempt({}, _mapping, body, where)
                self.check_keys(settings, where, {"condition", "required", "restart"})
                condition = self.opt(settings, "condition", where, _condition, condition)
                self.opt(settings, "required", where, _bool, True)
                self.opt(settings, "restart", where, _bool, False)
            out.append(Dependency(name, condition))
        return tuple(out)

    def healthcheck(self, value: Any, path: Key) -> Healthcheck:
        body = _mapping(value, path)
        allowed = {"test", "interval", "timeout", "retries", "start_period", "disable"}
        self.check_keys(body, path, allowed)
        if self.opt(body, "disable", path, _bool, False):
            return Healthcheck(("NONE",))
        if body.get("test") is None:
            raise _Bad(path, "a healthcheck needs a test (or disable: true)")
        return Healthcheck(
            test=self.opt(body, "test", path, _health_test, ("NONE",)),
            interval_s=self.opt(body, "interval", path, _duration, 30.0),
            timeout_s=self.opt(body, "timeout", path, _duration, 30.0),
            retries=self.opt(body, "retries", path, _int, 3),
            start_period_s=self.opt(body, "start_period", path, _duration, 0.0),
        )

    def extra_hosts(self, value: Any, path: Key) -> tuple[str, ...]:
        if isinstance(value, dict):
            pairs = [(f"{k}:{_text(v, (*path, k))}", (*path, k)) for k, v in value.items()]
        else:
            pairs = [
                (_text(v, (*path, i)), (*path, i)) for i, v in enumerate(_sequence(value, path))
            ]
        found = [self.attempt(None, _extra_host, text, where) for text, where in pairs]
        return tuple(host for host in found if host is not None)

    def deploy(self, value: Any, path: Key) -> _Deploy:
        body = _mapping(value, path)
        allowed = {
            "replicas",
            "resources",
            "placement",
            "restart_policy",
            "update_config",
            "rollback_config",
            "mode",
            "labels",
        }
        self.check_keys(body, path, allowed)
        out = _Deploy()
        out.global_mode = self.opt(body, "mode", path, _mode, "replicated") == "global"
        out.replicas = self.opt(body, "replicas", path, _replicas, 1)
        if out.global_mode and self.mode != "swarm":
            self.add(
                (*path, "mode"),
                "deploy mode 'global' (a task on every node) needs swarm mode "
                "(x-corral: {mode: swarm}); in container mode use replicas and constraints",
            )
        if out.global_mode and body.get("replicas") is not None:
            self.add((*path, "replicas"), "replicas cannot be combined with mode: global")
        resources = self.section(body, "resources", path, {"limits", "reservations"})
        resources_path = (*path, "resources")
        limits = self.section(resources, "limits", resources_path, {"cpus", "memory"})
        limits_path = (*resources_path, "limits")
        out.cpu_limit = self.opt(limits, "cpus", limits_path, _cpus, None)
        out.memory_limit = self.opt(limits, "memory", limits_path, _positive_bytes, None)
        reserved = self.section(resources, "reservations", resources_path, {"cpus", "memory"})
        reserved_path = (*resources_path, "reservations")
        out.cpu_reservation = self.opt(reserved, "cpus", reserved_path, _cpus, None)
        out.memory_reservation = self.opt(reserved, "memory", reserved_path, _positive_bytes, None)
        placement = self.section(body, "placement", path, {"constraints", "max_replicas_per_node"})
        out.max_replicas_per_node = self.opt(
            placement, "max_replicas_per_node", (*path, "placement"), _int, 0
        )
        if out.max_replicas_per_node and self.mode != "swarm":
            self.add(
                (*path, "placement", "max_replicas_per_node"),
                "only swarm mode spreads replicas this way (x-corral: {mode: swarm})",
            )
        constraints: list[Any] = self.opt(
            placement, "constraints", (*path, "placement"), _sequence, []
        )
        constraints_path = (*path, "placement", "constraints")
        found = [
            self.attempt(None, _constraint, item, (*constraints_path, i))
            for i, item in enumerate(constraints)
        ]
        out.constraints = tuple(c for c in found if c is not None)
        policy = self.section(
            body, "restart_policy", path, {"condition", "max_attempts", "delay", "window"}
        )
        policy_path = (*path, "restart_policy")
        if policy:
            condition: RestartPolicy = self.opt(
                policy, "condition", policy_path, _swarm_restart, "always"
            )
            attempts = self.opt(policy, "max_attempts", policy_path, _int, 0)
            out.restart_delay_s = self.opt(policy, "delay", policy_path, _duration, None)
            out.restart_window_s = self.opt(policy, "window", policy_path, _duration, None)
            out.restart = (condition, attempts if condition == "on-failure" else 0)
        out.update_config = self.update_policy(body, "update_config", path, UpdatePolicy())
        out.update_order = out.update_config.order
        out.rollback_config = self.update_policy(body, "rollback_config", path, ROLLBACK_DEFAULTS)
        labels = body.get("labels")
        if labels is not None and not isinstance(labels, dict | list):
            self.add((*path, "labels"), "expected a mapping or a list")
        return out

    def update_policy(
        self, body: Mapping[str, Any], key: str, path: Key, default: UpdatePolicy
    ) -> UpdatePolicy:
        """`update_config` or `rollback_config`; absent keys keep the default's values."""
        config = self.section(body, key, path, _UPDATE_KEYS)
        where = (*path, key)
        action: FailureAction = self.opt(
            config, "failure_action", where, _failure_action, default.failure_action
        )
        if key == "rollback_config" and action == "rollback":
            self.add(
                (*where, "failure_action"), "a rollback cannot roll back; use pause or continue"
            )
        return UpdatePolicy(
            parallelism=self.opt(config, "parallelism", where, _int, default.parallelism),
            delay_s=self.opt(config, "delay", where, _duration, default.delay_s),
            failure_action=action,
            monitor_s=self.opt(config, "monitor", where, _duration, default.monitor_s),
            max_failure_ratio=self.opt(
                config, "max_failure_ratio", where, _ratio, default.max_failure_ratio
            ),
            order=self.opt(config, "order", where, _order, default.order),
        )

    def corral_options(self, data: Mapping[str, Any]) -> None:
        """The top-level `x-corral` mapping: `mode: containers | swarm`."""
        options = self.section(data, "x-corral", (), _CORRAL_KEYS)
        self.mode = self.opt(options, "mode", ("x-corral",), _stack_mode, self.mode)
        if self.forced_mode is not None:
            self.mode = self.forced_mode

    def swarm_checks(self, spec: ServiceSpec, body: Mapping[str, Any], path: Key) -> None:
        """Refuse, by key, what a swarm service cannot express."""
        for key, why in _NOT_IN_SWARM.items():
            value = getattr(spec, key)
            if value is not None and value is not False and value != ():
                self.add((*path, key), f"not supported in swarm mode: {why}")
        for dependency in spec.depends_on:
            if dependency.condition != "service_started":
                self.add(
                    (*self.dependency_paths[(spec.name, dependency.service)], "condition"),
                    f"not supported in swarm mode: swarm starts services without waiting for "
                    f"{dependency.condition}",
                )
        for i, port in enumerate(spec.ports):
            if port.host_ip:
                self.add(
                    (*path, "ports", i),
                    "not supported in swarm mode: a swarm port is published on every address",
                )
        if "networks" in body:
            for name in spec.networks:
                driver = self.networks.get(name)
                if driver is not None and driver.driver not in (None, "overlay"):
                    self.add(
                        (*path, "networks", name),
                        f"not supported in swarm mode: network {name!r} has driver "
                        f"{driver.driver!r}; swarm services need overlay networks",
                    )

    # -- cross checks

    def check_dependencies(self, services: Mapping[str, ServiceSpec]) -> None:
        for name, spec in services.items():
            for dependency in spec.depends_on:
                target = services.get(dependency.service)
                if dependency.condition != "service_healthy" or target is None:
                    continue
                check = target.healthcheck
                if check is None or check.test == ("NONE",):
                    self.add(
                        self.dependency_paths[(name, dependency.service)],
                        f"service_healthy needs a healthcheck on {dependency.service!r}",
                    )
        order = list(services)
        for cycle in _cycles(services):
            first = min(cycle[:-1], key=order.index)
            start = cycle.index(first)
            rotated = [*cycle[start:-1], *cycle[:start], first]
            self.add(("services", first, "depends_on"), f"depends_on cycle: {' -> '.join(rotated)}")


def _cycles(services: Mapping[str, ServiceSpec]) -> list[list[str]]:
    """Every cycle found by a depth-first walk, each as [a, b, ..., a]."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dependency in services[name].depends_on:
            target = dependency.service
            if target not in services:
                continue
            if state.get(target) == 1:
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in services:
        if name not in state:
            visit(name)
    return found


# ---------------------------------------------------------------- value parsers


def _image(value: Any, path: Key) -> str:
    text = _word(value, path, "an image reference")
    if any(char.isspace() for char in text):
        raise _Bad(path, f"image {text!r} must not contain spaces")
    return text


def _replicas(value: Any, path: Key) -> int:
    return _int(value, path, 0, 100)


def _subnet(value: Any, path: Key) -> str:
    text = _word(value, path, "a subnet such as 10.10.0.0/24")
    try:
        return str(ipaddress.ip_network(text))
    except ValueError as exc:
        raise _Bad(path, f"bad subnet {text!r}: {exc}") from None


def _restart(value: Any, path: Key) -> tuple[RestartPolicy, int]:
    if value is False:
        return ("no", 0)
    text = _word(value, path, "a restart policy").lower()
    policy, sep, count = text.partition(":")
    if policy not in _RESTART or (sep and policy != "on-failure"):
        raise _Bad(path, f"restart {text!r}: use no, always, on-failure[:N] or unless-stopped")
    return (_RESTART[policy], _int(count, path) if sep else 0)


def _ratio(value: Any, path: Key) -> float:
    try:
        number = float(_text(value, path, "a ratio between 0 and 1"))
    except ValueError:
        raise _Bad(path, f"expected a ratio between 0 and 1, not {value!r}") from None
    if not 0 <= number <= 1:
        raise _Bad(path, f"must be between 0 and 1, not {number:g}")
    return number


def _choice(table: Mapping[str, T], what: str, refusal: str) -> Callable[[Any, Key], T]:
    """A field that takes one word of `table` and answers its value; `refusal` names the
    field and the words it takes, with `{text}` where the word given goes."""

    def parse(value: Any, path: Key) -> T:
        text = _word(value, path, what)
        if text not in table:
            raise _Bad(path, refusal.format(text=repr(text)))
        return table[text]

    return parse


_STACK_MODES: dict[str, StackMode] = {"containers": "containers", "swarm": "swarm"}
_UPDATE_ORDERS: dict[str, UpdateOrder] = {"stop-first": "stop-first", "start-first": "start-first"}
_FAILURE_ACTIONS: dict[str, FailureAction] = {
    "rollback": "rollback",
    "pause": "pause",
    "continue": "continue",
}
_network_mode = _choice(
    {m: m for m in _NETWORK_MODES},
    "a network mode",
    "network_mode {text} is not supported; use host, none or bridge",
)
_swarm_restart = _choice(
    _SWARM_RESTART, "none, on-failure or any", "condition {text}: use none, on-failure or any"
)
_condition = _choice(
    _CONDITIONS, "a condition", "condition {text}: use one of " + ", ".join(_CONDITIONS)
)
_mode = _choice(
    {"replicated": "replicated", "global": "global"},
    "a deploy mode",
    "deploy mode {text} is not supported; use replicated or global",
)
_order = _choice(
    _UPDATE_ORDERS, "stop-first or start-first", "order {text}: use stop-first or start-first"
)
_failure_action = _choice(
    _FAILURE_ACTIONS,
    "rollback, pause or continue",
    "failure_action {text}: use rollback, pause or continue",
)
_stack_mode = _choice(_STACK_MODES, "containers or swarm", "mode {text}: use containers or swarm")


def stack_mode(text: str) -> StackMode | None:
    """`containers` or `swarm` as a StackMode; None for anything else."""
    return _STACK_MODES.get(text)


def _health_test(value: Any, path: Key) -> tuple[str, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise _Bad(path, "the healthcheck test is empty")
        return ("CMD-SHELL", value)
    items = tuple(_arg(item, (*path, i)) for i, item in enumerate(_sequence(value, path)))
    kind = items[0] if items else ""
    if kind == "NONE" and len(items) == 1:
        return items
    if kind == "CMD" and len(items) >= 2:
        return items
    if kind == "CMD-SHELL" and len(items) == 2:
        return items
    raise _Bad(path, 'test must be a string, ["CMD", arg...], ["CMD-SHELL", "cmd"] or ["NONE"]')


def _device(value: Any, path: Key) -> str:
    text = _word(value, path, "a device such as /dev/ttyUSB0")
    parts = text.split(":")
    if len(parts) > 3 or not all(part.startswith("/") for part in parts[:2]):
        raise _Bad(path, f"device {text!r} must look like /dev/x[:/dev/y[:rwm]]")
    if len(parts) == 3 and (not parts[2] or set(parts[2]) - set("rwm")):
        raise _Bad(path, f"device {text!r}: permissions must be letters from 'rwm'")
    return text


def _extra_host(text: str, path: Key) -> str:
    separator = min((i for i in (text.find("="), text.find(":")) if i >= 0), default=-1)
    name, address = text[:separator].strip(), text[separator + 1 :].strip()
    address = address.removeprefix("[").removesuffix("]")
    if separator <= 0 or not name:
        raise _Bad(path, f"extra host {text!r} must look like name:ip")
    if address != "host-gateway":
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise _Bad(path, f"extra host {text!r}: {address!r} is not an IP address") from None
    return f"{name}:{address}"


def _constraint(value: Any, path: Key) -> Constraint:
    text = _text(value, path, "a constraint such as node.labels.role == robot")
    match = _CONSTRAINT.fullmatch(text)
    if not match:
        raise _Bad(path, f"constraint {text!r} must look like 'node.labels.role == robot'")
    name, op, expected = match[1], match[2], match[3]
    lowered = name.lower()
    prefix = next((p for p in ("node.labels.", "engine.labels.") if lowered.startswith(p)), None)
    if lowered in ("node.hostname", "node.role"):
        name = lowered
    elif prefix is not None and len(name) > len(prefix):
        name = prefix + name[len(prefix) :]  # the label key keeps its case
    else:
        raise _Bad(
            path,
            f"constraint {text!r}: unknown field {name!r}; "
            f"supported: {', '.join(CONSTRAINT_FIELDS)}",
        )
    return Constraint(name, "==" if op == "==" else "!=", expected)


def _port_number(text: str, path: Key, whole: str) -> int:
    if "-" in text:
        raise _Bad(path, f"port {whole!r}: port ranges are not supported; list each port")
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise _Bad(path, f"port {whole!r}: {text!r} is not a port number (1-65535)")
    return int(text)


def _exposed(value: Any, path: Key) -> int | None:
    """A single tcp port (what readiness checks); udp ports and ranges are accepted, unused."""
    whole = _scalar(value, path)
    number, slash, protocol = whole.partition("/")
    if slash and protocol.strip().lower() not in ("tcp", "udp"):
        raise _Bad(path, f"expose {whole!r}: protocol must be tcp or udp")
    if "-" in number:
        low, _, high = number.partition("-")
        _port_number(low.strip(), path, whole)
        _port_number(high.strip(), path, whole)
        return None
    port = _port_number(number.strip(), path, whole)
    return None if slash and protocol.strip().lower() == "udp" else port


def _protocol(text: str, path: Key, whole: str) -> Literal["tcp", "udp"]:
    lowered = text.strip().lower()
    if lowered == "tcp":
        return "tcp"
    if lowered == "udp":
        return "udp"
    raise _Bad(path, f"port {whole!r}: protocol must be tcp or udp")


def _host_ip(text: str, path: Key, whole: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _Bad(path, f"port {whole!r}: {text!r} is not an IP address") from None


def _port(value: Any, path: Key) -> PortMapping:
    if isinstance(value, dict):
        return _long_port(value, path)
    whole = _word(value, path, "a port such as 8080:80")
    spec, slash, protocol = whole.partition("/")
    proto = _protocol(protocol, path, whole) if slash else "tcp"
    host_ip = ""
    if spec.startswith("["):
        close = spec.find("]")
        if close < 0 or spec[close + 1 : close + 2] != ":":
            raise _Bad(path, f"port {whole!r} must look like [ip]:host:container")
        host_ip = _host_ip(spec[1:close], path, whole)
        parts = spec[close + 2 :].split(":")
        if len(parts) != 2:
            raise _Bad(path, f"port {whole!r} must look like [ip]:host:container")
    else:
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            host_ip = _host_ip(parts.pop(0), path, whole)
    container = _port_number(parts[-1], path, whole)
    host = _port_number(parts[0], path, whole) if len(parts) == 2 and parts[0] else None
    return PortMapping(container, host, host_ip, proto)


def _long_port(body: dict[str, Any], path: Key) -> PortMapping:
    allowed = {"target", "published", "host_ip", "protocol", "mode", "name", "app_protocol"}
    unknown = [key for key in body if key not in allowed and not key.startswith("x-")]
    if unknown:
        raise _Bad((*path, unknown[0]), "unknown or unsupported key")
    if body.get("target") is None:
        raise _Bad(path, "a port needs a target (the container port)")
    given = {key: _text(body[key], (*path, key)) for key in allowed if body.get(key) is not None}
    target = _port_number(given["target"], (*path, "target"), given["target"])
    host = None
    if given.get("published"):
        host = _port_number(given["published"], (*path, "published"), given["published"])
    ip = ""
    if given.get("host_ip"):
        ip = _host_ip(given["host_ip"], (*path, "host_ip"), given["host_ip"])
    protocol = _protocol(
        given.get("protocol") or "tcp", (*path, "protocol"), given.get("protocol", "")
    )
    if given.get("mode", "host") not in ("host", "ingress"):
        raise _Bad((*path, "mode"), "mode must be host or ingress")
    return PortMapping(target, host, ip, protocol)


# ---------------------------------------------------------------- entry point


def parse_compose(
    text: str,
    source: str = "stack file",
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    stack: str = "stack",
    mode: StackMode | None = None,
    read: Read = no_files,
) -> StackSpec:
    """Parse a Compose file into a StackSpec; raise FileInvalid listing every problem found.

    Variables come from `env` laid over `base_dir/.env`; relative paths (bind sources, build
    contexts, env_file) are taken from `base_dir` and are a problem when it is None. `mode`
    overrides the file's `x-corral: {mode: ...}`. `read` reads those files for it (the
    caller's I/O); by default there are none.
    """
    doc = load_located(text, source)
    problems: list[Problem] = []
    variables: dict[str, str] = {}
    if base_dir is not None:
        dotenv = Path(base_dir) / ".env"
        try:
            values, _, errors = parse_env_text(read(dotenv))
        except (FileNotFoundError, NotADirectoryError):
            values, errors = {}, []
        except (OSError, UnicodeDecodeError) as exc:
            values, errors = {}, [(0, f"cannot read it: {exc}")]
        if values or errors:
            variables.update(values)
            for number, message in errors:
                where = f" line {number}" if number else ""
                problems.append(Problem("", 0, f"{dotenv}{where}: {message}"))
    variables.update(env or {})
    folder = Path(base_dir) if base_dir is not None else None
    parser = _Parser(doc, variables, folder, stack, read)
    parser.forced_mode = mode
    parser.problems.extend(problems)
    data = parser.interpolate(doc.data, ())
    spec = parser.stack_spec(data)
    if parser.problems:
        raise FileInvalid(source, sorted(parser.problems, key=lambda p: p.line))
    return spec
