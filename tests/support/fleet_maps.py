"""Small fleet maps for tests, as the API takes them: a corridor with a siding, where two
robots meeting head-on have one way to pass."""

from typing import Any


def corridor() -> dict[str, Any]:
    """A - B - C - D in a line, with a siding S beside B and C."""
    return {
        "name": "corridor",
        "markers": [
            {"id": "A", "x": 0, "y": 0},
            {"id": "B", "x": 1, "y": 0},
            {"id": "C", "x": 2, "y": 0},
            {"id": "D", "x": 3, "y": 0},
            {"id": "S", "x": 1.5, "y": 1},
        ],
        "lanes": [["A", "B"], ["B", "C"], ["C", "D"], ["B", "S"], ["S", "C"]],
    }
