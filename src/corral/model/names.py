"""Rules for the names and labels users give to corral resources.

Shared by every resource kind so that a name valid for a host is valid for a stack.
"""

import re

from pydantic.config import JsonDict

NAME_PATTERN = r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$"
LABEL_KEY_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,126}[A-Za-z0-9])?$"
LABEL_VALUE_MAX = 256
# The API description of the rules check_name and check_labels apply (their messages are
# clearer than a schema validator's, so they stay the check).
NAME_SCHEMA: JsonDict = {"pattern": NAME_PATTERN}


def labels_schema(nullable: bool = False) -> JsonDict:
    value: JsonDict = {"type": "string", "maxLength": LABEL_VALUE_MAX}
    if nullable:
        value = {"anyOf": [value, {"type": "null"}]}
    return {"patternProperties": {LABEL_KEY_PATTERN: value}, "additionalProperties": False}


_NAME = re.compile(NAME_PATTERN)
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)


def check_name(value: str, what: str = "name") -> str:
    """Return `value` if it is a valid resource name, else raise ValueError saying why."""
    if not _NAME.match(value):
        raise ValueError(
            f"{what} {value!r} must be 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Validate label keys and values; values are free text up to 256 characters."""
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(f"label key {key!r} must be letters, digits, '.', '_', '/' or '-'")
        if len(value) > LABEL_VALUE_MAX:
            raise ValueError(f"label {key!r}: value longer than 256 characters")
    return labels


def parse_label_args(items: list[str]) -> dict[str, str]:
    """Turn CLI `k=v` strings into a dict, raising ValueError on a missing '='."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"label {item!r} must look like key=value")
        labels[key] = value
    return check_labels(labels)
