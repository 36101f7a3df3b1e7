"""Session templates: a stack file plus declared parameters, resources and a lifetime.

Parsed when a template is registered (every problem named with its line), bound to a
request's parameters and instantiated into a StackSpec by the session service.
"""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from corral.model.compose import Read, no_files, parse_bytes, parse_compose, parse_duration
from corral.model.names import check_name
from corral.model.stack_spec import StackSpec
from corral.model.yamlfile import FileInvalid, Problem, dotted, load_located

SECTION = "x-corral-template"
CONDITION = "x-corral-if"
BUILTINS = ("session_id", "session_network")
ParamType = Literal["int", "bool", "str"]
Value = int | bool | str
Add = Callable[[tuple[str | int, ...], str], None]

_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_USED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)|\$([A-Za-z_][A-Za-z0-9_]*)")
_SECTION_KEYS = {"name", "description", "parameters", "resources", "ttl", "ready_timeout"}
_PARAM_KEYS = {"type", "default", "min", "max", "description", "choices", "render"}
# How `${name}` writes a bool parameter into the file: the (true, false) texts.
BOOL_RENDERINGS: dict[str, tuple[str, str]] = {
    "lower": ("true", "false"),
    "python": ("True", "False"),
    "number": ("1", "0"),
}
DEFAULT_TTL_S = 3600.0
DEFAULT_READY_TIMEOUT_S = 60.0
MAX_STR = 1000
MAX_MEMORY = 1 << 50
# Relative paths are checked when a session is made from the template's folder; the syntax
# check resolves them against a folder that does not exist.
_NOWHERE = Path("/nonexistent/corral-template-check")


@dataclass(frozen=True)
class Parameter:
    name: str
    type: ParamType
    default: Value | None = None  # None: the caller must give it
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    description: str = ""
    render: str = "lower"  # bool only: a key of BOOL_RENDERINGS

    def text(self, value: Value) -> str:
        """The value as `${name}` puts it into the file."""
        if isinstance(value, bool):
            return BOOL_RENDERINGS[self.render][0 if value else 1]
        return str(value)


@dataclass(frozen=True)
class TemplateSpec:
    """A registered template, validated; `file` is its text as given."""

    name: str
    file: str
    description: str = ""
    parameters: Mapping[str, Parameter] = field(default_factory=dict)
    cpus: float | None = None  # None: the services' reservations
    memory: int | None = None
    ttl_s: float = DEFAULT_TTL_S
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    conditions: Mapping[str, tuple[str, bool]] = field(default_factory=dict)  # svc -> (p, want)


class ParamsInvalid(ValueError):
    """Parameters that do not fit the template, each problem naming its parameter."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        first = next(iter(problems.items()))
        super().__init__(f"parameter {first[0]}: {first[1]}")


# ---------------------------------------------------------------- parsing


def parse_template(text: str, source: str, name: str | None = None) -> TemplateSpec:
    """Validate a template file; raise FileInvalid listing every problem with its line."""
    doc = load_located(text, source)
    problems: list[Problem] = []

    def add(path: tuple[str | int, ...], message: str) -> None:
        problems.append(Problem(dotted(path), doc.line_of(path), message))

    data = doc.data if isinstance(doc.data, dict) else {}
    section = data.get(SECTION) or {}
    if not isinstance(section, dict):
        add((SECTION,), "expected a mapping (name, description, parameters, resources, ttl)")
        section = {}
    for key in section:
        if key not in _SECTION_KEYS:
            add((SECTION, key), f"unknown key; allowed: {', '.join(sorted(_SECTION_KEYS))}")
    chosen = name or _text_or_none(section.get("name"))
    if not chosen:
        add((SECTION, "name"), "a template needs a name (here or given when it is added)")
        chosen = "template"
    try:
        check_name(chosen, "template name")
    except ValueError as exc:
        add((SECTION, "name"), str(exc))
    params = _parameters(section.get("parameters"), add)
    cpus, memory = _resources(section.get("resources"), add)
    ttl = _seconds(section.get("ttl"), (SECTION, "ttl"), DEFAULT_TTL_S, add)
    ready = _seconds(
        section.get("ready_timeout"), (SECTION, "ready_timeout"), DEFAULT_READY_TIMEOUT_S, add
    )
    problems += _unknown_variables(text, params)
    conditions = _conditions(data, params, add)
    spec = TemplateSpec(
        name=chosen,
        file=text,
        description=_text_or_none(section.get("description")) or "",
        parameters=params,
        cpus=cpus,
        memory=memory,
        ttl_s=ttl,
        ready_timeout_s=ready,
        conditions=conditions,
    )
    if not problems:
        # A trial with the defaults (or a placeholder for required ones) checks the rest of
        # the file as a stack file, with the restrictions sessions add.
        trial = {
            p.name: p.default if p.default is not None else placeholder(p) for p in params.values()
        }
        try:
            stack = parse_compose(
                text,
                source,
                env=_env(params, trial, "TRIAL", "trial"),
                base_dir=_NOWHERE,
                stack="trial",
            )
        except FileInvalid as exc:
            problems.extend(exc.problems)
        else:
            _check_shape(data, stack, add)
    if problems:
        raise FileInvalid(source, sorted(problems, key=lambda p: p.line))
    return spec


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _parameters(raw: Any, add: Add) -> dict[str, Parameter]:
    path: tuple[str | int, ...] = (SECTION, "parameters")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        add(path, "expected a mapping of parameter name to {type, default, min, max}")
        return {}
    out: dict[str, Parameter] = {}
    for name, body in raw.items():
        where = (*path, name)
        if not _PARAM_NAME.fullmatch(name) or name in BUILTINS:
            add(where, f"{name!r} cannot be a parameter name (letters, digits, _; not {BUILTINS})")
            continue
        if isinstance(body, str):
            body = {"type": body}
        if not isinstance(body, dict):
            add(where, "expected {type: int|bool|str, default, min, max}")
            continue
        for key in body:
            if key not in _PARAM_KEYS:
                add((*where, key), f"unknown key; allowed: {', '.join(sorted(_PARAM_KEYS))}")
        kind = body.get("type", "str")
        if kind not in ("int", "bool", "str"):
            add((*where, "type"), f"type {kind!r} is not int, bool or str")
            continue
        try:
            low = _bound(body.get("min"), kind)
            high = _bound(body.get("max"), kind)
        except ValueError as exc:
            add((*where, "min" if "min" in body else "max"), str(exc))
            continue
        if low is not None and high is not None and low > high:
            add((*where, "min"), f"min {low} is above max {high}")
            continue
        choices = body.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            add((*where, "choices"), "choices must be a list of strings")
            choices = []
        if choices and kind != "str":
            add((*where, "choices"), "choices apply to str parameters only")
        render = body.get("render", "lower")
        if kind != "bool" and "render" in body:
            add((*where, "render"), "render applies to bool parameters only")
            render = "lower"
        elif render not in BOOL_RENDERINGS:
            options = ", ".join(f"{k} ({t}/{f})" for k, (t, f) in BOOL_RENDERINGS.items())
            add((*where, "render"), f"render {render!r} is not one of {options}")
            render = "lower"
        param = Parameter(
            name,
            kind,
            None,
            low,
            high,
            tuple(choices),
            _text_or_none(body.get("description")) or "",
            render,
        )
        if body.get("default") is not None:
            try:
                param = replace(param, default=coerce(param, _yaml_value(body["default"], kind)))
            except ValueError as exc:
                add((*where, "default"), str(exc))
                continue
        out[name] = param
    return out


def _bound(value: Any, kind: str) -> int | None:
    if value is None:
        return None
    if kind == "bool":
        raise ValueError("bool parameters take no bounds")
    try:
        return int(str(value))
    except ValueError:
        raise ValueError(f"bound {value!r} is not a whole number") from None


def _yaml_value(value: Any, kind: str) -> Any:
    """YAML numbers arrive as text: read them as the parameter's type."""
    if kind == "int" and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _resources(raw: Any, add: Add) -> tuple[float | None, int | None]:
    path: tuple[str | int, ...] = (SECTION, "resources")
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        add(path, "expected {cpus, memory}")
        return None, None
    cpus = memory = None
    for key in raw:
        if key not in ("cpus", "memory"):
            add((*path, key), "unknown key; allowed: cpus, memory")
    if raw.get("cpus") is not None:
        try:
            cpus = float(str(raw["cpus"]))
            if not 0 <= cpus <= 1024:
                raise ValueError
        except ValueError:
            add((*path, "cpus"), f"cpus {raw['cpus']!r} is not a number of CPUs (0-1024)")
            cpus = None
    if raw.get("memory") is not None:
        try:
            memory = parse_bytes(str(raw["memory"]))
            if memory > MAX_MEMORY:
                raise ValueError(f"memory {raw['memory']!r} is more than 1 PiB")
        except ValueError as exc:
            add((*path, "memory"), str(exc))
            memory = None
    return cpus, memory


def _seconds(raw: Any, path: tuple[str | int, ...], default: float, add: Add) -> float:
    if raw is None:
        return default
    try:
        seconds = parse_duration(str(raw))
    except ValueError as exc:
        add(path, str(exc))
        return default
    if not 1 <= seconds <= 7 * 86400:
        add(path, "must be between 1s and 7 days")
        return default
    return seconds


def _unknown_variables(text: str, params: Mapping[str, Parameter]) -> list[Problem]:
    """Every $name in the file must be a declared parameter or a built-in."""
    stripped = text.replace("$$", "  ")
    known = ", ".join([*sorted(params), *BUILTINS])
    return [
        Problem(
            "",
            stripped.count("\n", 0, match.start()) + 1,
            f"${{{match[1] or match[2]}}} is not a declared parameter (known: {known})",
        )
        for match in _USED.finditer(stripped)
        if (match[1] or match[2]) not in params and (match[1] or match[2]) not in BUILTINS
    ]


def _conditions(
    data: Mapping[str, Any], params: Mapping[str, Parameter], add: Add
) -> dict[str, tuple[str, bool]]:
    out: dict[str, tuple[str, bool]] = {}
    services = data.get("services")
    if not isinstance(services, dict):
        return out
    for svc, body in services.items():
        if not isinstance(body, dict) or body.get(CONDITION) is None:
            continue
        path = ("services", svc, CONDITION)
        raw = body[CONDITION]
        words = raw.split() if isinstance(raw, str) else []
        negate = len(words) == 2 and words[0] == "not"
        name = words[-1] if words and (len(words) == 1 or negate) else ""
        param = params.get(name)
        if param is None or param.type != "bool":
            add(path, f"{CONDITION} must be '<bool parameter>' or 'not <bool parameter>'")
            continue
        out[str(svc)] = (name, not negate)
    return out


def _check_shape(data: Mapping[str, Any], stack: StackSpec, add: Add) -> None:
    """What a session cannot do: it has one private network and disposable storage."""
    for key in ("networks", "volumes"):
        if data.get(key):
            add(
                (key,),
                f"a template cannot declare {key}: a session gets one private network "
                "and no named volumes (use tmpfs or a bind mount)",
            )
    for name, svc in stack.services.items():
        if svc.network_mode is not None:
            add(("services", name, "network_mode"), "sessions run on their private network")
        if svc.replicas != 1:
            add(("services", name, "deploy", "replicas"), "a session runs one of each service")
        if any(m.kind == "volume" and m.source for m in svc.volumes):
            add(("services", name, "volumes"), "named volumes are not allowed in templates")


def placeholder(param: Parameter) -> Value:
    if param.type == "int":
        return param.minimum if param.minimum is not None else max(1, param.maximum or 1)
    if param.type == "bool":
        return False
    return param.choices[0] if param.choices else "x"


# ---------------------------------------------------------------- binding


def coerce(param: Parameter, value: Any) -> Value:
    """Check one value against its parameter; ValueError says what is wrong."""
    if param.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_shown(value)}")
        if param.minimum is not None and value < param.minimum:
            raise ValueError(f"{value} is below the minimum {param.minimum}")
        if param.maximum is not None and value > param.maximum:
            raise ValueError(f"{value} is above the maximum {param.maximum}")
        return value
    if param.type == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_shown(value)}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_shown(value)}")
    if len(value) > MAX_STR:
        raise ValueError(f"longer than {MAX_STR} characters")
    if param.minimum is not None and len(value) < param.minimum:
        raise ValueError(f"shorter than {param.minimum} characters")
    if param.maximum is not None and len(value) > param.maximum:
        raise ValueError(f"longer than {param.maximum} characters")
    if param.choices and value not in param.choices:
        raise ValueError(f"{value!r} is not one of {', '.join(param.choices)}")
    return value


def _shown(value: Any) -> str:
    kind = {bool: "boolean", int: "number", float: "number", str: "string", list: "list"}
    text = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return f"{kind.get(type(value), type(value).__name__)} {text[:40]}"


def bind(spec: TemplateSpec, given: Mapping[str, Any]) -> dict[str, Value]:
    """The template's parameters filled from `given` and defaults; ParamsInvalid otherwise."""
    problems: dict[str, str] = {}
    for name in given:
        if name not in spec.parameters:
            known = ", ".join(sorted(spec.parameters)) or "none"
            problems[name] = f"template {spec.name} has no such parameter (known: {known})"
    values: dict[str, Value] = {}
    for name, param in spec.parameters.items():
        if name in given:
            try:
                values[name] = coerce(param, given[name])
            except ValueError as exc:
                problems[name] = str(exc)
        elif param.default is not None:
            values[name] = param.default
        else:
            problems[name] = "is required"
    if problems:
        raise ParamsInvalid(problems)
    return values


def _env(
    params: Mapping[str, Parameter], values: Mapping[str, Value], session: str, network: str
) -> dict[str, str]:
    env = {name: params[name].text(value) for name, value in values.items()}
    env.update(session_id=session, session_network=network)
    return env


def instantiate(
    spec: TemplateSpec,
    values: Mapping[str, Value],
    session: str,
    network: str,
    base_dir: Path | None,
    read: Read = no_files,
) -> StackSpec:
    """The session's stack: the file with the values in, services whose condition is off
    left out. FileInvalid when the values make the file wrong (say, a bad port)."""
    stack = parse_compose(
        spec.file,
        f"template {spec.name}",
        env=_env(spec.parameters, values, session, network),
        base_dir=base_dir,
        stack=f"template-{spec.name}",
        read=read,
    )
    enabled = {
        name: svc
        for name, svc in stack.services.items()
        if name not in spec.conditions
        or bool(values[spec.conditions[name][0]]) == spec.conditions[name][1]
    }
    problems = [
        Problem(f"services.{name}.depends_on", svc.line, f"depends on {dep.service}, which is off")
        for name, svc in enabled.items()
        for dep in svc.depends_on
        if dep.service not in enabled
    ]
    if not enabled:
        problems.append(Problem("services", 0, "with these parameters no service is on"))
    if problems:
        raise FileInvalid(f"template {spec.name}", problems)
    return replace(stack, services=enabled)


def reservation(spec: TemplateSpec, stack: StackSpec) -> tuple[float, int]:
    """CPUs and bytes a session of this stack reserves on its host."""
    cpus = spec.cpus
    if cpus is None:
        cpus = sum(s.cpu_reservation or 0.0 for s in stack.services.values())
    memory = spec.memory
    if memory is None:
        memory = sum(s.memory_reservation or 0 for s in stack.services.values())
    return cpus, memory
