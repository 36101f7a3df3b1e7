"""YAML loading that remembers where each value came from, for errors that name a line.

Used by every file format corral reads: hosts files and stack (compose) files.
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


_STR_TAG = "tag:yaml.org,2002:str"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_AS_TEXT = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"}
_MAX_NODES = 200_000


def load_located(text: str, source: str) -> Located:
    """Parse one YAML document keeping every key's line; FileInvalid (with the line) if bad.

    `<<` merge keys work; aliases may not recurse or expand past a size limit. Plain scalars
    are kept as written.

    Numbers, dates and yes/no/on/off stay text (as in YAML 1.2 and Compose), so `VERSION: 1.10`
    is "1.10", `- 22:22` is a port and not a base-60 number; only true/false are booleans.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        reason = getattr(exc, "problem", None) or str(exc)
        raise FileInvalid(source, [Problem("", line, f"not valid YAML: {reason}")]) from None
    except RecursionError:
        raise FileInvalid(source, [Problem("", 0, "not valid YAML: nested too deeply")]) from None
    if node is None:
        return Located(None, {})
    try:
        if _expanded_size(node, {}, set()) > _MAX_NODES:
            raise FileInvalid(source, [Problem("", 0, "aliases expand to a file that is too big")])
        _prepare(node, set(), source)
        lines: dict[Path, int] = {(): node.start_mark.line + 1}
        data = _convert(node, (), lines, source)
    except FileInvalid:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FileInvalid(source, [Problem("", 0, f"not valid YAML: {exc}")]) from None
    return Located(data, lines)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_size(node: yaml.Node, sizes: dict[int, int], active: set[int]) -> int:
    """How many nodes the document has once aliases are expanded; ValueError if recursive."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        raise ValueError(f"line {node.start_mark.line + 1}: an alias refers to itself")
    active.add(key)
    total = 1
    for child in _children(node):
        total = min(total + _expanded_size(child, sizes, active), _MAX_NODES + 1)
    active.discard(key)
    sizes[key] = total
    return total


def _prepare(node: yaml.Node, seen: set[int], source: str) -> None:
    """Apply `<<` merges (explicit keys win, then earlier merges) and keep plain scalars text."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        if node.style is None and (
            node.tag in _AS_TEXT
            or (node.tag == _BOOL_TAG and node.value.lower() not in ("true", "false"))
        ):
            node.tag = _STR_TAG
        return
    for child in _children(node):
        _prepare(child, seen, source)
    if not isinstance(node, yaml.MappingNode):
        return
    if not any(key.tag == _MERGE_TAG for key, _ in node.value):
        return
    explicit: list[tuple[yaml.Node, yaml.Node]] = []
    merged: list[tuple[yaml.Node, yaml.Node]] = []
    for key, value in node.value:
        if key.tag != _MERGE_TAG:
            explicit.append((key, value))
            continue
        for part in value.value if isinstance(value, yaml.SequenceNode) else [value]:
            if not isinstance(part, yaml.MappingNode):
                line = part.start_mark.line + 1
                problem = Problem("", line, "'<<' must merge a mapping or a list of mappings")
                raise FileInvalid(source, [problem])
            merged.extend(part.value)
    taken = {key.value for key, _ in explicit if isinstance(key, yaml.ScalarNode)}
    for key, value in merged:
        if isinstance(key, yaml.ScalarNode):
            if key.value in taken:
                continue
            taken.add(key.value)
        explicit.append((key, value))
    node.value = explicit
