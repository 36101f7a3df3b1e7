"""Docker Compose stack files: interpolate, parse and validate them into a StackSpec.

Called by the stack store, the API and the CLI to check a file, and by the reconciler to plan it.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.model.compose_check import Read, no_files
from corral.model.compose_env import parse_env_text
from corral.model.compose_fields import (
    _TOP_KEYS,
    _stack_mode,
    parse_bytes,
    parse_duration,
    stack_mode,
)
from corral.model.compose_networks import NetworksVolumes
from corral.model.compose_services import Services
from corral.model.stack_spec import NetworkSpec, ServiceSpec, StackMode, StackSpec
from corral.model.yamlfile import FileInvalid, Problem, load_located

_CORRAL_KEYS = {"mode"}  # the top-level x-corral mapping

__all__ = ["Read", "no_files", "parse_bytes", "parse_compose", "parse_duration", "stack_mode"]


class _Parser(Services, NetworksVolumes):
    """Walks one interpolated document, collecting every problem instead of stopping."""

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

    def corral_options(self, data: Mapping[str, Any]) -> None:
        """The top-level `x-corral` mapping: `mode: containers | swarm`."""
        options = self.section(data, "x-corral", (), _CORRAL_KEYS)
        self.mode = self.opt(options, "mode", ("x-corral",), _stack_mode, self.mode)
        if self.forced_mode is not None:
            self.mode = self.forced_mode

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
