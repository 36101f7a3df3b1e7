"""Compose variables: `${VAR}` interpolation (with :-, -, :?, ?, :+, + and $$) and the
lines of .env and env_file files. Pure text in, values out; model/compose.py calls both.
"""

import re
from collections.abc import Mapping

# ---------------------------------------------------------------- interpolation

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.DOTALL)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Expand $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?m}, ${VAR?m}, ${VAR:+r}, $$."""
    if "$" not in text:
        return text
    out: list[str] = []
    position = 0
    while position < len(text):
        dollar = text.find("$", position)
        if dollar < 0:
            out.append(text[position:])
            break
        out.append(text[position:dollar])
        after = text[dollar + 1 : dollar + 2]
        if after == "$":
            out.append("$")
            position = dollar + 2
        elif after == "{":
            end = _closing_brace(text, dollar + 2)
            if end < 0:
                raise ValueError(f"unclosed '${{' in {text!r}")
            out.append(_expand(text[dollar + 2 : end], env, text))
            position = end + 1
        else:
            match = _VAR_NAME.match(text, dollar + 1)
            if not match:
                raise ValueError(f"lone '$' in {text!r}: write '$$' for a literal '$'")
            out.append(env.get(match[0], ""))
            position = match.end()
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    position = start
    while position < len(text):
        if text.startswith("$$", position):
            position += 2
        elif text.startswith("${", position):
            depth += 1
            position += 2
        else:
            if text[position] == "}":
                depth -= 1
                if depth == 0:
                    return position
            position += 1
    return -1


def _expand(body: str, env: Mapping[str, str], whole: str) -> str:
    match = _BRACED.fullmatch(body)
    if not match:
        raise ValueError(f"malformed '${{{body}}}' in {whole!r}")
    name, op, argument = match[1], match[2], match[3]
    value = env.get(name)
    if not op:
        return value or ""
    present = bool(value) if op.startswith(":") else value is not None
    if op.endswith("-"):
        return value if present and value is not None else interpolate(argument, env)
    if op.endswith("+"):
        return interpolate(argument, env) if present else ""
    if present and value is not None:
        return value
    message = interpolate(argument, env)
    suffix = f": {message}" if message else ""
    raise ValueError(f"required variable {name} is missing a value{suffix}")


# ---------------------------------------------------------------- env files

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def parse_env_text(text: str) -> tuple[dict[str, str], list[str], list[tuple[int, str]]]:
    """KEY=VALUE lines (quotes, `export`, comments); returns values, bare keys, errors."""
    values: dict[str, str] = {}
    bare: list[str] = []
    errors: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line.removeprefix("export ").lstrip()
        key, sep, rest = line.partition("=")
        key = key.strip()
        if not _ENV_KEY.fullmatch(key):
            errors.append((number, f"expected KEY=VALUE, got {raw.strip()!r}"))
            continue
        if not sep:
            bare.append(key)
            continue
        try:
            values[key] = _env_value(rest.strip())
        except ValueError as exc:
            errors.append((number, str(exc)))
    return values, bare, errors


def _env_value(rest: str) -> str:
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        chars: list[str] = []
        position = 1
        while position < len(rest):
            char = rest[position]
            if char == quote:
                tail = rest[position + 1 :].strip()
                if tail and not tail.startswith("#"):
                    raise ValueError(f"unexpected text after the closing quote: {tail!r}")
                return "".join(chars)
            if quote == '"' and char == "\\" and position + 1 < len(rest):
                chars.append(_ESCAPES.get(rest[position + 1], "\\" + rest[position + 1]))
                position += 2
                continue
            chars.append(char)
            position += 1
        raise ValueError(f"unclosed {quote} quote")
    comment = rest.find(" #")
    return (rest[:comment] if comment >= 0 else rest).strip()
