"""The base images a Dockerfile builds on: its `FROM` lines, with `ARG` defaults and build
args put in, stage names and `scratch` left out (they are not images to supply).

Read by the image supply before a build, so each base image is copied to the building host.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class BaseImage:
    image: str
    line: int


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Instructions with their first line number; continuations joined, comments dropped."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append((start, pending + stripped))
        pending = ""
    if pending:
        lines.append((start, pending))
    return lines


def _expand(text: str, values: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match[1] or match[3]
        return values.get(name) or (match[2] or "")

    return _VARIABLE.sub(one, text)


def base_images(text: str, build_args: Mapping[str, str]) -> list[BaseImage]:
    """Each image a `FROM` names (in order, once), as the build would resolve it."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    found: list[BaseImage] = []
    seen: set[str] = set()
    for line, instruction in _logical_lines(text):
        word, _, rest = instruction.partition(" ")
        word = word.upper()
        if word == "ARG" and not stages and not found:
            name, _, default = rest.strip().partition("=")
            args[name] = build_args.get(name, default.strip().strip('"'))
        elif word == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            if not parts:
                continue
            image = _expand(parts[0], args)
            if len(parts) >= 3 and parts[1].lower() == "as":
                stages.add(parts[2].lower())
            if image.lower() == "scratch" or image.lower() in stages or image in seen:
                continue
            seen.add(image)
            found.append(BaseImage(image, line))
    return found
