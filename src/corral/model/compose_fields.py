"""Compose field checks: each takes one value of a stack file and answers it typed, or
raises `_Bad` with the value's path; with the tables of keys and words each field takes."""

import ipaddress
import math
import re
import shlex
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import UnionType
from typing import Any, Literal, ParamSpec, TypeVar

from corral.model.stack_spec import (
    CONSTRAINT_FIELDS,
    Condition,
    Constraint,
    FailureAction,
    PortMapping,
    RestartPolicy,
    StackMode,
    UpdateOrder,
)

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


def _measure(
    value: Any, path: Key, kinds: type | UnionType, expected: str, parse: Callable[[Any], T]
) -> T:
    """`parse(value)` for a value of `kinds`; its refusal, or `expected`, as the problem."""
    if not isinstance(value, kinds):
        raise _Bad(path, expected)
    try:
        return parse(value)
    except ValueError as exc:
        raise _Bad(path, str(exc)) from None


def _duration(value: Any, path: Key) -> float:
    expected = "expected a duration such as 10s or 1m30s"
    return _measure(value, path, str | int | float, expected, parse_duration)


def _bytes(value: Any, path: Key) -> int:
    return _measure(value, path, str | int, "expected a size such as 64m or 1g", parse_bytes)


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
