"""Compose validation plumbing: the walker that records every problem with its path and
line, interpolates values, resolves paths and checks keys, shared by the section parsers."""

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from corral.model.compose_env import interpolate
from corral.model.compose_fields import (
    _KEY_HINTS,
    _RESERVED_LABEL,
    Key,
    _Bad,
    _mapping,
    _scalar,
    _sequence,
    _text,
)
from corral.model.stack_spec import (
    NetworkSpec,
    StackMode,
)
from corral.model.yamlfile import Located, Problem, dotted

T = TypeVar("T")
P = ParamSpec("P")

Read = Callable[[Path], str]
"""How the caller reads a file the stack names (its folder's `.env`, an `env_file`): the
text, or the errors `Path.read_text` raises (FileNotFoundError, OSError, UnicodeDecodeError).
The model reads nothing itself."""


def no_files(path: Path) -> str:
    """A `Read` for a file checked with no folder to read from: every file is missing."""
    raise FileNotFoundError(path)


class Checker:
    """Walks one interpolated document, collecting every problem (with its line) instead of
    stopping: the plumbing the section parsers share."""

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

    def each(self, parse: Callable[[Any, Key], str]) -> Callable[[Any, Key], tuple[str, ...]]:
        """A parser for a list whose items `parse` checks one by one (all problems kept)."""

        def parse_all(value: Any, path: Key) -> tuple[str, ...]:
            items = _sequence(value, path)
            out: list[str | None] = [
                self.attempt(None, parse, item, (*path, i)) for i, item in enumerate(items)
            ]
            return tuple(item for item in out if item is not None)

        return parse_all

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
