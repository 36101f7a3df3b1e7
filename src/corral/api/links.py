"""OpenAPI links: from an operation that makes something to the operations that use it, so
a client (and the fuzz run's stateful phase) can follow the id the answer carries.

Routes pass `answer_links(...)` as their `responses=`.
"""

from typing import Any


def _ref(method: str, path: str) -> str:
    """A JSON pointer to an operation: '/' is '~1'; braces are percent-encoded."""
    escaped = path.replace("~", "~0").replace("/", "~1").replace("{", "%7B").replace("}", "%7D")
    return f"#/paths/{escaped}/{method}"


def answer_links(
    statuses: tuple[int, ...], field: str, *uses: tuple[str, str, str]
) -> dict[int | str, dict[str, Any]]:
    """For each status, links to every (method, path, parameter) in `uses`, the parameter
    taken from the answer body's `field` (a JSON pointer without its leading '/')."""
    links = {
        f"{method.upper()} {path}": {
            "operationRef": _ref(method, path),
            "parameters": {parameter: f"$response.body#/{field}"},
        }
        for method, path, parameter in uses
    }
    return {status: {"description": "Made", "links": links} for status in statuses}
