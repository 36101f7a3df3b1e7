"""YAML loading that remembers where each value came from, for errors that name a line.

Used by every file format corral reads (hosts files now, stack files later).
"""

from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file: where (key path and line) and what."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class FileInvalid(ValueError):
    """A file that cannot be used, with every problem found in it."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(str(p) for p in problems))


class Located:
    """Parsed YAML data plus the line of every key path in it."""

    def __init__(self, data: Any, lines: dict[Path, int]) -> None:
        self.data = data
        self.lines = lines

    def line_of(self, path: Path) -> int:
        """The line of the deepest part of `path` that is known (1-based; 0 if none)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line:
                return line
        return 0

    def problems_from(self, error: ValidationError, prefix: Path = ()) -> list[Problem]:
        out = []
        for item in error.errors():
            path = prefix + tuple(p for p in item["loc"] if isinstance(p, str | int))
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "unknown key"
            out.append(Problem(dotted(path), self.line_of(path), message))
        return out


def dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)


def load_located(text: str, source: str) -> Located:
    """Parse one YAML document; FileInvalid (with the line) if it is not valid YAML."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        reason = getattr(exc, "problem", None) or str(exc)
        raise FileInvalid(source, [Problem("", line, f"not valid YAML: {reason}")]) from None
    if node is None:
        return Located(None, {})
    lines: dict[Path, int] = {(): node.start_mark.line + 1}
    data = _convert(node, (), lines, source)
    return Located(data, lines)


def _convert(node: yaml.Node, path: Path, lines: dict[Path, int], source: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _convert(key_node, path, lines, source)
            if not isinstance(key, str | int | float | bool):
                line = key_node.start_mark.line + 1
                raise FileInvalid(source, [Problem(dotted(path), line, "keys must be plain")])
            key = str(key)
            if key in out:
                line = key_node.start_mark.line + 1
                problem = Problem(dotted((*path, key)), line, "key appears twice")
                raise FileInvalid(source, [problem])
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, (*path, key), lines, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            items.append(_convert(item, (*path, index), lines, source))
        return items
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError) as exc:
        line = node.start_mark.line + 1
        raise FileInvalid(source, [Problem(dotted(path), line, str(exc))]) from None
    finally:
        loader.dispose()
